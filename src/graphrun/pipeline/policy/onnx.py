"""The example policy on ONNX Runtime: one .onnx file per stage, and the OrtRunner that runs each file.

`export_policy(policy, folder)` writes prefix.onnx and expert.onnx (export_onnx: dynamic batch dim, weights
inside the file); `ExamplePolicy.pipeline(OrtOptions(...), onnx_folder=folder)` then builds its stages on
OrtRunner, or only the stages whose options are OrtOptions, so one pipeline can mix GraphRunner and
OrtRunner stages. The flow is unchanged: the denoising loop stays in Python, one expert Run per Euler step
(modules.py), which is also what ORT's CUDA graphs need: they refuse control-flow ops (Loop, If, Scan;
ort/sessions.py rule 2), so an in-graph loop would not capture. Every op of both stages exports; only a
bfloat16 policy is refused (IOBinding has no bfloat16 element type: ort/dtypes.py).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from graphrun.errors import ConfigError
from graphrun.ort.options import OrtOptions

if TYPE_CHECKING:
    from graphrun.ort.runner import OrtRunner

# each stage's ONNX input and output names, in the order the flow passes them
STAGE_INPUTS = {"prefix": ("images", "tokens", "state"), "expert": ("kv", "x", "t")}
STAGE_OUTPUTS = {"prefix": ("kv",), "expert": ("x_next",)}
EXPORT_BATCH = 2  # torch.export makes a size-1 dim a constant: export at 2 (export.py)


def stage_file(folder: str | Path, stage: str) -> Path:
    """Where a stage's .onnx file lives in an exported policy's folder."""
    return Path(folder) / f"{stage}.onnx"


def export_policy(
    modules: Mapping[str, torch.nn.Module],
    examples: Mapping[str, tuple[torch.Tensor, ...]],
    dtype: torch.dtype,
    folder: str | Path,
) -> dict[str, Path]:
    """Write one .onnx file per stage (its module, called on its example inputs) into `folder` (created);
    the files by stage name. The export runs on CPU copies (the file is the same whatever the device)."""
    from graphrun.ort.export import export_onnx  # needs onnx and onnxscript (graphrun[onnx])

    if dtype == torch.bfloat16:
        raise ConfigError(
            "a bfloat16 policy cannot run on OrtRunner (IOBinding has no bfloat16 type): "
            "build the policy with dtype=torch.float16 or torch.float32 to export it"
        )
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    files = {}
    for stage, module in modules.items():
        files[stage] = export_onnx(
            copy.deepcopy(module).cpu(),
            tuple(t.cpu() for t in examples[stage]),
            stage_file(target, stage),
            input_names=STAGE_INPUTS[stage],
            output_names=STAGE_OUTPUTS[stage],
        )
    return files


def ort_runner(
    folder: str | Path | None, stage: str, example: Sequence[torch.Tensor], options: OrtOptions
) -> OrtRunner:
    """The OrtRunner of one stage from its file in `folder` (export_policy's), on the example's device."""
    if folder is None:
        raise ConfigError(
            f"stage {stage!r} has OrtOptions but no onnx_folder was given: "
            "export the policy first (ExamplePolicy.export_onnx(folder)) and pass onnx_folder=folder"
        )
    path = stage_file(folder, stage)
    if not path.is_file():
        raise ConfigError(
            f"stage {stage!r}: no {path}; write it with ExamplePolicy.export_onnx({str(folder)!r})"
        )
    from graphrun.ort.runner import OrtRunner  # needs onnxruntime (graphrun[onnx])

    return OrtRunner(path, tuple(example), options=options)
