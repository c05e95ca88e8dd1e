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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from graphrun.errors import ConfigError
from graphrun.ort.options import OrtOptions

if TYPE_CHECKING:
    from graphrun.ort.runner import OrtRunner
    from graphrun.pipeline.policy.example import ExamplePolicy

# each stage's ONNX input and output names, in the order the flow passes them
STAGE_INPUTS = {"prefix": ("images", "tokens", "state"), "expert": ("kv", "x", "t")}
STAGE_OUTPUTS = {"prefix": ("kv",), "expert": ("x_next",)}
EXPORT_BATCH = 2  # torch.export makes a size-1 dim a constant: export at 2 (export.py)


def stage_file(folder: str | Path, stage: str) -> Path:
    """Where a stage's .onnx file lives in an exported policy's folder."""
    return Path(folder) / f"{stage}.onnx"


def export_policy(policy: ExamplePolicy, folder: str | Path) -> dict[str, Path]:
    """Write one .onnx file per stage of `policy` into `folder` (created); the files by stage name.

    The export runs on CPU copies of the modules (the file is the same whatever device the policy is on).
    """
    from graphrun.ort.export import export_onnx  # needs onnx and onnxscript (graphrun[onnx])

    if policy.dtype == torch.bfloat16:
        raise ConfigError(
            "a bfloat16 policy cannot run on OrtRunner (IOBinding has no bfloat16 type): "
            "build the policy with dtype=torch.float16 or torch.float32 to export it"
        )
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    examples = _cpu_examples(policy)
    modules = {"prefix": policy.prefix, "expert": policy.expert}
    files = {}
    for stage, module in modules.items():
        files[stage] = export_onnx(
            copy.deepcopy(module).cpu(),
            examples[stage],
            stage_file(target, stage),
            input_names=STAGE_INPUTS[stage],
            output_names=STAGE_OUTPUTS[stage],
        )
    return files


def _cpu_examples(policy: ExamplePolicy) -> dict[str, tuple[torch.Tensor, ...]]:
    obs = policy.observation(EXPORT_BATCH, seed=policy.config.seed)
    images, tokens, state = (t.cpu() for t in (obs.images, obs.tokens, obs.state))
    assert obs.noise is not None
    with torch.no_grad():
        kv = policy.prefix(obs.images, obs.tokens, obs.state).cpu()
    t = torch.full((EXPORT_BATCH, 1), 0.5, dtype=policy.dtype)
    return {"prefix": (images, tokens, state), "expert": (kv, obs.noise.cpu(), t)}


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
