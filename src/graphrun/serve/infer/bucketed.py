"""Model calls in buckets over batch x the declared dynamic dims (a sequence length), through a
BucketedRunner (graphrun.graphs.buckets) named "infer".

A request's bucket key is `BucketedRunner.bucket_of` of its shapes: the rung of each declared dim,
verified padding-safe (a request no bucket takes, e.g. along a dim where the model ignores its mask,
keys by its own sizes and shares an eager call only with requests of exactly those sizes). A batch is
one bucket's requests: each is padded to the bucket (`pad_to`: pad_value, the mask with 0), they are
stacked, the runner pads the batch to its rung and replays (one call per top-rung chunk), and the
outputs are split by rows and each request's sliced back to its own sizes along the output axes that
follow each dim. With --enforce-eager the model runs eager on the batch padded to its largest request.
The runner's size histograms (graphrun_bucket_size, read by `graphrun ladder --from-metrics`) record
each batch's rows and each request's own sizes, not the padded ones.

Padding ratio per call counts every dynamic dim: 1 - real / padded positions, a request's real
positions being its rows x the product of its sizes along the declared dims, and the call's padded
positions its batch rung x the product of its bucket's rungs (eager: rows x the batch's largest sizes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from graphrun.errors import ConfigError
from graphrun.graphs.buckets import Bucket, BucketDim, BucketedRunner, BucketOptions
from graphrun.serve.infer.calls import Arrays, graphs_summary, run_chunks, split_rows, to_wire
from graphrun.serve.infer.config import InferConfig
from graphrun.serve.infer.dims import DynamicDim
from graphrun.serve.infer.metrics import InferMetrics
from graphrun.serve.infer.rows import runner_options
from graphrun.serve.infer.schema import BucketKey, TensorSpec
from graphrun.serve.infer.source import ModelSource, named_outputs, output_specs

Sizes = tuple[int, ...]


class BucketedCalls:
    """ModelCalls through a BucketedRunner over the source's declared dims."""

    def __init__(
        self, source: ModelSource, config: InferConfig, registry: CollectorRegistry, metrics: InferMetrics
    ) -> None:
        self._source, self._metrics, self._eager = source, metrics, config.enforce_eager
        self._examples = dict(source.example)  # each input's dtype and device
        self._fn = keyword_fn(source)
        outputs = output_specs(source)  # one eager run: the outputs' names
        names = tuple(spec.name for spec in outputs)
        options = BucketOptions(
            dims=tuple(bucket_dim(dim, names) for dim in source.dims),
            mask=source.mask,
            verify=config.verify,
            runner=runner_options(config, registry, name=None),
            name="infer",
        )
        self.runner = BucketedRunner(self._fn, self._examples, options)
        self.rungs = self.runner.status().batch_ladder
        self.dims = tuple(
            _resolved(dim, pairs, names)
            for dim, pairs in zip(source.dims, self.runner.output_axes, strict=True)
        )
        self.outputs = tuple(_with_dims(spec, self.dims) for spec in outputs)

    def key(self, tensors: Arrays) -> BucketKey:
        shapes = {name: array.shape for name, array in tensors.items()}
        bucket = self.runner.bucket_of(shapes)
        return BucketKey(bucket.sizes if bucket is not None else self._sizes(shapes))

    def run(
        self, key: BucketKey, requests: Sequence[Arrays], on_launched: Callable[[], None]
    ) -> list[Arrays]:
        sizes = [self._sizes({name: a.shape for name, a in request.items()}) for request in requests]
        target = tuple(max(column) for column in zip(*sizes, strict=True)) if self._eager else key.dims
        padded = [self.runner.pad_to(_tensors(request), Bucket(target, None)) for request in requests]
        inputs = {name: torch.cat([p[name] for p in padded]) for name, _ in self._source.example}
        rows = [next(iter(request.values())).shape[0] for request in requests]
        volumes = np.repeat([math.prod(s) for s in sizes], rows)  # real positions of each stacked row
        self.runner.record(sum(rows), sizes)  # the traffic: rows per batch, each request's own sizes
        launch = partial(self._launch, volumes=volumes)
        outputs = run_chunks(inputs, self.rungs[-1], launch, on_launched)
        return [self._trim(out, s) for out, s in zip(split_rows(outputs, rows), sizes, strict=True)]

    def _launch(self, inputs: dict[str, torch.Tensor], rows: slice, volumes: np.ndarray) -> Arrays:
        """One call on the device: the runner (pads the batch to its rung, replays), or eager.
        volumes: the real positions of every stacked row of the batch (this chunk's are `rows`)."""
        real = int(volumes[rows].sum())
        tensors = {
            name: t.to(self._examples[name].device, self._examples[name].dtype) for name, t in inputs.items()
        }
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        if self._eager:
            self._observe(real, len(volumes[rows]) * math.prod(self._sizes(shapes)))
            with torch.inference_mode():
                outputs = self._fn(**tensors)
        else:
            bucket = self.runner.bucket_of(shapes)
            if bucket is not None and bucket.batch is not None:
                self._observe(real, bucket.batch * math.prod(bucket.sizes))
            outputs = self.runner.run_unrecorded(tensors)
        return {name: to_wire(t) for name, t in named_outputs(outputs).items()}

    def _observe(self, real: int, padded: int) -> None:
        """Padding ratio of one call: padded / all positions, a position being one row at one size
        along every declared dim."""
        self._metrics.padding_ratio.observe(1.0 - real / padded)

    def _sizes(self, shapes: dict[str, Any]) -> Sizes:
        return tuple(dim.size_of(shapes) for dim in self.dims)

    def _trim(self, outputs: Arrays, sizes: Sizes) -> Arrays:
        """One request's outputs sliced back to its own sizes along every axis that follows a dim."""
        trimmed = dict(outputs)
        for dim, size in zip(self.dims, sizes, strict=True):
            for name, axis in (dim.outputs or {}).items():
                index: list[slice] = [slice(None)] * trimmed[name].ndim
                index[axis] = slice(0, size)
                trimmed[name] = trimmed[name][tuple(index)]
        return trimmed

    def backend(self) -> str:
        return self.runner.status().buckets[0].runner.backend

    def graphs(self) -> str:
        buckets = self.runner.status().buckets
        return graphs_summary(sum(b.num_captured for b in buckets), sum(len(b.runner) for b in buckets))


def keyword_fn(source: ModelSource) -> Callable[..., Any]:
    """The source's callable taking its inputs by name (a BucketedRunner calls fn(**inputs))."""
    if source.keywords:
        return source.fn

    def call(**tensors: torch.Tensor) -> Any:
        args, kwargs = source.call_args(tensors)
        return source.fn(*args, **kwargs)

    return call


def bucket_dim(dim: DynamicDim, outputs: Sequence[str]) -> BucketDim:
    """The runner's BucketDim of a declared dim (output names -> leaf positions)."""
    unknown = sorted(set(dim.outputs or {}) - set(outputs))
    if unknown:
        raise ConfigError(
            f"dim {dim.name!r}: outputs names {unknown}; the model's outputs are {list(outputs)}"
        )
    leaves = (
        None if dim.outputs is None else {outputs.index(name): axis for name, axis in dim.outputs.items()}
    )
    return BucketDim(dim.name, dict(dim.axes), dim.ladder, dim.pad_value, leaves)


def _resolved(dim: DynamicDim, pairs: Sequence[tuple[int, int]], outputs: Sequence[str]) -> DynamicDim:
    """`dim` with its output axes as the runner resolved them (declared or inferred), by name."""
    return dataclasses.replace(dim, outputs={outputs[leaf]: axis for leaf, axis in pairs})


def _with_dims(spec: TensorSpec, dims: Sequence[DynamicDim]) -> TensorSpec:
    """An output's spec with None on every axis that follows a dim."""
    followed = {(dim.outputs or {})[spec.name] for dim in dims if spec.name in (dim.outputs or {})}
    shape = tuple(None if axis in followed else size for axis, size in enumerate(spec.shape))
    return dataclasses.replace(spec, shape=shape)


def _tensors(request: Arrays) -> dict[str, torch.Tensor]:
    """A request's arrays as CPU tensors (copied when read-only: torch cannot share those)."""
    return {name: torch.from_numpy(a if a.flags.writeable else a.copy()) for name, a in request.items()}
