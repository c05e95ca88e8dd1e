"""Export a torch module to an ONNX file whose batch dim is dynamic, for OrtRunner.

torch.onnx.export with dynamo=True (torch.export, then onnxscript's translation): the exporter torch
keeps and develops; the TorchScript one (dynamo=False) is deprecated since torch 2.9. It needs the
`onnx` and `onnxscript` packages (graphrun[onnx]). Dim 0 of every input is exported as one symbolic
dim named "batch"; outputs whose dim 0 follows it get the same symbol, which is what OrtRunner reads
to pad and slice them. The model's weights are stored inside the file (external_data=False) so one
file is the whole model, up to protobuf's 2 GiB limit.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from graphrun.errors import ConfigError

log = logging.getLogger(__name__)

BATCH_DIM = "batch"


def export_onnx(
    module: torch.nn.Module,
    example_args: Sequence[torch.Tensor] | torch.Tensor,
    path: str | Path,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset_version: int | None = None,
) -> Path:
    """Write `module` (in eval mode) to `path` with a dynamic batch dim on every input; returns the path.

    The example's batch size must be >= 2: torch.export specialises a dim of size 1 to a constant.
    """
    args = (example_args,) if isinstance(example_args, torch.Tensor) else tuple(example_args)
    if not args or any(not isinstance(t, torch.Tensor) or t.dim() == 0 for t in args):
        raise ConfigError("export_onnx needs example tensors with a batch dim (dim 0), one per input")
    if any(t.shape[0] < 2 for t in args):
        raise ConfigError(
            f"example batch sizes {[t.shape[0] for t in args]}: use >= 2 "
            "(a size-1 dim is exported as a constant)"
        )
    names = list(input_names) if input_names is not None else [f"input_{i}" for i in range(len(args))]
    if len(names) != len(args):
        raise ConfigError(f"{len(names)} input_names for {len(args)} example tensors")
    batch = torch.export.Dim(BATCH_DIM)
    target = Path(path)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()) as chatter:
        torch.onnx.export(
            module.eval(),
            args,
            str(target),
            dynamo=True,
            input_names=names,
            output_names=list(output_names) if output_names is not None else None,
            dynamic_shapes=tuple({0: batch} for _ in args),
            opset_version=opset_version,
            external_data=False,
        )
    log.debug("torch.onnx.export: %s", chatter.getvalue().strip())
    log.info("exported %s to %s (%.1f MiB)", type(module).__name__, target, target.stat().st_size / 2**20)
    return target
