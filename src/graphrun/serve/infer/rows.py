"""Batch-only model calls: one batch-ladder runner over the model; a batch is its requests' rows,
concatenated.

The runner pads the rows to its rung, replays and slices back (eager where no graph fits); a batch above
the top rung (one oversized request) runs as top-rung chunks. Padding ratio per replayed call: padded
rows / rung rows. `RowBatchCalls` is that, whatever the runner; `RowCalls` runs a GraphRunner (an ONNX
model's OrtRunner is onnx_calls.py's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.runner import GraphRunner
from graphrun.graphs.status import RunnerStatus
from graphrun.serve.infer.calls import Arrays, graphs_summary, run_chunks, split_rows, to_wire
from graphrun.serve.infer.config import InferConfig
from graphrun.serve.infer.dims import DynamicDim
from graphrun.serve.infer.metrics import InferMetrics
from graphrun.serve.infer.schema import BucketKey, TensorSpec
from graphrun.serve.infer.source import ModelSource, named_outputs, output_specs


class BatchRunner(Protocol):
    """A runner over a batch ladder (GraphRunner, OrtRunner): its rungs, a batch's rung, its status."""

    sizes: tuple[int, ...]

    def rung_for(self, batch_size: int) -> int | None: ...

    def status(self) -> RunnerStatus: ...


class RowBatchCalls:
    """ModelCalls of a batch-only model through `runner`; a subclass sets `runner`, `rungs`, `outputs`,
    `_names` (the inputs, in order) and `_metrics`, and makes one runner call (`_call`)."""

    runner: BatchRunner
    rungs: tuple[int, ...]
    outputs: tuple[TensorSpec, ...]
    dims: tuple[DynamicDim, ...] = ()
    _names: tuple[str, ...]
    _metrics: InferMetrics

    def key(self, tensors: Arrays) -> BucketKey:
        return BucketKey()

    def run(
        self, key: BucketKey, requests: Sequence[Arrays], on_launched: Callable[[], None]
    ) -> list[Arrays]:
        inputs = {name: np.concatenate([request[name] for request in requests]) for name in self._names}
        outputs = run_chunks(inputs, self.rungs[-1], self._launch, on_launched)
        return split_rows(outputs, [next(iter(request.values())).shape[0] for request in requests])

    def _launch(self, inputs: Arrays, _rows: slice) -> Arrays:
        """One runner call (padded to its rung, replayed; eager where no graph fits); outputs by name."""
        rows = next(iter(inputs.values())).shape[0]
        rung = self.runner.rung_for(rows)
        if rung is not None:
            self._metrics.padding_ratio.observe((rung - rows) / rung)
        return self._call(inputs)

    def _call(self, inputs: Arrays) -> Arrays:
        """The runner on one chunk's rows; its outputs on the host, by name."""
        raise NotImplementedError

    def backend(self) -> str:
        return self.runner.status().backend

    def graphs(self) -> str:
        statuses = list(self.runner.status())
        return graphs_summary(sum(rung.captured for rung in statuses), len(statuses))


class RowCalls(RowBatchCalls):
    """ModelCalls through a batch-ladder GraphRunner named "infer"."""

    runner: GraphRunner

    def __init__(
        self, source: ModelSource, config: InferConfig, registry: CollectorRegistry, metrics: InferMetrics
    ) -> None:
        self._source, self._metrics = source, metrics
        self._names = tuple(name for name, _ in source.example)
        self._examples = dict(source.example)  # each input's dtype and device
        self.runner = GraphRunner(
            source.fn, *source.call_args(self._examples), options=runner_options(config, registry)
        )
        self.rungs = self.runner.sizes
        self.outputs = output_specs(source)

    def _call(self, inputs: Arrays) -> Arrays:
        tensors = {name: self._to_model(name, array) for name, array in inputs.items()}
        args, kwargs = self._source.call_args(tensors)
        return {name: to_wire(t) for name, t in named_outputs(self.runner(*args, **kwargs)).items()}

    def _to_model(self, name: str, array: np.ndarray) -> torch.Tensor:
        example = self._examples[name]
        return torch.from_numpy(array).to(example.device, example.dtype)


def runner_options(
    config: InferConfig, registry: CollectorRegistry, name: str | None = "infer"
) -> RunnerOptions:
    """The batch-ladder runner's options from the served model's settings."""
    return RunnerOptions(
        sizes=config.cuda_graph_sizes or None,
        max_batch_size=None if config.cuda_graph_sizes else config.cuda_graph_max_bs,
        backend=config.graph_backend,
        verify=config.verify,
        registry=registry,
        name=name,
        mode="none" if config.enforce_eager else "full",
    )
