"""`graphrun serve --onnx model.onnx`: an ONNX model's batch calls through one OrtRunner (graphrun[onnx]).

The ONNX graph names the tensors: its inputs are the request's, its outputs the answer's. Dim 0 of every
input and output is the batch and must be dynamic (a dim_param, as export_onnx writes it); every other
dim must be a fixed size. Start-up checks both on the model file before any session is built, naming
the tensor and the fix. Rungs come from --cuda-graph-sizes / --cuda-graph-max-bs; --enforce-eager gives
an eager session; --graph-backend auto gives CUDA graphs where onnxruntime has the CUDA EP and the
device is CUDA, else eager, which OrtRunner says once in an INFO line and /health and /v1/models name
as the backend ("ort-cuda-graph", "ort-eager"). Batching, chunking and splitting are rows.py's
(RowBatchCalls): concatenate the requests' rows, one runner call per top-rung chunk, split the outputs
back by rows.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from prometheus_client import CollectorRegistry

from graphrun.errors import ConfigError
from graphrun.ort.dtypes import torch_dtype
from graphrun.ort.options import OrtOptions
from graphrun.ort.runner import OrtRunner
from graphrun.ort.sessions import has_cuda_ep
from graphrun.serve.infer.calls import Arrays, to_wire
from graphrun.serve.infer.config import InferConfig
from graphrun.serve.infer.metrics import InferMetrics
from graphrun.serve.infer.rows import RowBatchCalls
from graphrun.serve.infer.schema import TensorSpec
from graphrun.serve.infer.source import ModelSource

# --graph-backend -> OrtRunner's backend ("sim" is GraphRunner's CPU simulator: InferConfig refuses it)
BACKENDS = {"auto": "auto", "cuda": "cuda_graph"}
EXPORT_HINT = (
    "export it with a dynamic dim 0 and fixed other dims: graphrun.ort.export_onnx(module, example, path), "
    "or torch.onnx.export(..., dynamo=True, dynamic_shapes=({0: torch.export.Dim('batch')}, ...))"
)


class OrtCalls(RowBatchCalls):
    """ModelCalls through an OrtRunner named "infer"; `source` describes the inputs (fn: the runner)."""

    runner: OrtRunner

    def __init__(self, config: InferConfig, registry: CollectorRegistry, metrics: InferMetrics) -> None:
        assert config.onnx is not None
        self._metrics = metrics
        device = onnx_device(config.device)
        inputs = read_inputs(config.onnx)
        example = tuple(
            (name, torch.zeros((1, *rows), dtype=dtype, device=device)) for name, dtype, rows in inputs
        )
        tensors = tuple(t for _, t in example)
        self.runner = OrtRunner(config.onnx, tensors, options=ort_options(config, registry))
        self.source = ModelSource(self.runner, example, name=config.onnx.stem)
        self._names = tuple(name for name, _ in example)
        self.rungs = self.runner.sizes
        self.outputs = _output_specs(self.runner, config.onnx)

    def _call(self, inputs: Arrays) -> Arrays:
        """Outputs by the graph's names."""
        device = self.source.device
        tensors = [torch.from_numpy(inputs[name]).to(device) for name in self._names]
        outputs = self.runner(*tensors)
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else outputs
        return {spec.name: to_wire(t) for spec, t in zip(self.outputs, outputs, strict=True)}


def onnx_device(device: str) -> torch.device:
    """--device for an ONNX model: "auto" is CUDA where torch sees a GPU and onnxruntime has the CUDA EP."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and has_cuda_ep() else "cpu")
    return torch.device(device)


def ort_options(config: InferConfig, registry: CollectorRegistry) -> OrtOptions:
    """The runner's options from the served model's settings."""
    return OrtOptions(
        sizes=config.cuda_graph_sizes or None,
        max_batch_size=None if config.cuda_graph_sizes else config.cuda_graph_max_bs,
        backend="eager" if config.enforce_eager else BACKENDS[config.graph_backend],
        verify=config.verify,
        registry=registry,
        name="infer",
    )


def read_inputs(path: Path) -> tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]:
    """Each graph input's name, dtype and fixed dims after the batch; ConfigError names a bad one."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # a file that is not an ONNX model: protobuf raises several kinds
        raise ConfigError(f"--onnx {path}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
    weights = {init.name for init in graph.initializer}  # old exporters list weights as inputs too
    found = []
    for value in graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        elem = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
        dtype = torch_dtype(f"tensor({elem})", value.name)
        found.append((value.name, dtype, _rows(path, value.name, list(tensor.shape.dim))))
    if not found:
        raise ConfigError(f"--onnx {path}: the graph has no inputs to serve")
    return tuple(found)


def _rows(path: Path, name: str, dims: list[onnx.TensorShapeProto.Dimension]) -> tuple[int, ...]:
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    if not shape or isinstance(shape[0], int):
        raise ConfigError(
            f"--onnx {path}: input {name!r} has shape {shape}, whose dim 0 is not dynamic; dim 0 is the "
            f"batch: {EXPORT_HINT}"
        )
    dynamic = [axis for axis, size in enumerate(shape[1:], 1) if not isinstance(size, int) or size < 1]
    if dynamic:
        raise ConfigError(
            f"--onnx {path}: input {name!r} has shape {shape}, dynamic in dim(s) {dynamic}; only the batch "
            f"(dim 0) may be dynamic: {EXPORT_HINT}"
        )
    return tuple(int(size) for size in shape[1:])


def _output_specs(runner: OrtRunner, path: Path) -> tuple[TensorSpec, ...]:
    """The outputs as /v1/models describes them; each must keep the batch in dim 0."""
    fixed = [spec.name for spec in runner.outputs if not spec.batched]
    if fixed:
        raise ConfigError(
            f"--onnx {path}: output(s) {fixed} have a fixed dim 0; every output must keep the batch "
            f"in dim 0: {EXPORT_HINT}"
        )
    return tuple(
        TensorSpec(spec.name, str(spec.dtype).removeprefix("torch."), (None, *spec.row_shape))
        for spec in runner.outputs
    )
