"""BucketedRunner: one batch-ladder GraphRunner per bucket (a product of rungs of the other dynamic dims).

A call reads its sizes along every bucketed dim, goes to the bucket of least volume that covers them and
accepts their padding (routing.py), pads those dims and the mask (shapes.py), runs that bucket's runner
(which pads and slices the batch itself) and slices the outputs back along the axes that follow each dim.
A call no bucket takes runs `fn` eager on its own tensors, counted. Every bucket shares one backend, so on
CUDA one graph pool; buckets are captured largest first, so smaller ones reuse the pool's blocks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from prometheus_client import REGISTRY

from graphrun.errors import ConfigError, GraphInputError
from graphrun.graphs.backends import make_backend
from graphrun.graphs.buckets.routing import BucketTable
from graphrun.graphs.buckets.shapes import (
    OutputAxes,
    Sizes,
    infer_axes,
    pad_inputs,
    sizes_of,
    sizes_of_shapes,
)
from graphrun.graphs.buckets.spec import BATCH, Bucket, BucketOptions
from graphrun.graphs.buckets.status import BucketedStatus, BucketStatus
from graphrun.graphs.buckets.verify import DimVerifier, resized_example
from graphrun.graphs.metrics import collector_for
from graphrun.graphs.runner import GraphRunner
from graphrun.graphs.size_histogram import BucketStats, count_size, new_counts
from graphrun.graphs.status import CallFallback

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Layout:
    """What construction learned: the batch ladder, the output axes, the mask's example."""

    batch_ladder: tuple[int, ...]
    outputs: OutputAxes
    mask_example: torch.Tensor | None


class BucketedRunner:
    """Run `fn(**inputs)` through graphs over batch x every bucketed dim (BucketOptions: dims, mask, budgets).

    example_inputs: named tensors, batched along axis 0, each bucketed dim at the axes its BucketDim names.
    Outputs are those of `fn` with the batch and every followed axis sliced to the call's real sizes; they
    alias static buffers until the bucket's next call unless the runner options say clone_outputs=True.
    """

    def __init__(
        self, fn: Callable[..., Any], example_inputs: Mapping[str, torch.Tensor], options: BucketOptions
    ) -> None:
        self._fn, self.options = fn, options
        self._dims = tuple(options.dims)
        self._examples = self._check_examples(example_inputs)
        batch = int(next(iter(self._examples.values())).shape[0])
        ladder = options.batch_ladder(batch)
        self.num_graphs = options.check_graph_budget(ladder)
        self._table = BucketTable([d.rungs for d in self._dims])
        device = next(iter(self._examples.values())).device
        self.backend = make_backend(options.runner.backend, device)  # one backend: one pool on CUDA
        self._layout = _Layout(ladder, self._infer_outputs(), self._examples.get(options.mask or ""))
        self._check_memory()
        self.name = self._register(options)
        self._details: dict[tuple[int, ...], str] = {}
        self._runners = self._capture_buckets()
        if options.verify:
            self._verify_padding()

    # ----- construction steps -------------------------------------------------------------------------

    def _check_examples(self, examples: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not examples or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in examples.values()):
            raise ConfigError("example_inputs must be a non-empty dict of tensors with a batch axis 0")
        for dim in self._dims:
            missing = sorted(set(dim.axes) - set(examples) - {self.options.mask})
            if missing:
                raise ConfigError(f"dim {dim.name!r} names inputs {missing} that are not in example_inputs")
            sizes_of([dim], examples)  # the examples agree on every dim
        if self.options.mask is not None and self.options.mask not in examples:
            raise ConfigError(f"mask {self.options.mask!r} must be in example_inputs (calls may omit it)")
        return dict(examples)

    def _probe(self, sizes: Sizes) -> dict[str, torch.Tensor]:
        return resized_example(self._dims, self.options.mask, self._examples, sizes, rows=1)

    def _infer_outputs(self) -> OutputAxes:
        with torch.no_grad():
            outputs = infer_axes(self._fn, self._dims, self._probe)
        for dim, pairs in zip(self._dims, outputs.per_dim, strict=True):
            log.debug("bucketed dim %s: output (leaf, axis) sliced back: %s", dim.name, pairs)
        return outputs

    def _static_bytes(self, bucket: Sizes) -> int:
        """Estimated static buffer bytes of one bucket: inputs exact, outputs scaled by volume."""
        top_batch, tops = self._layout.batch_ladder[-1], tuple(d.rungs[-1] for d in self._dims)
        per_row = 0
        for name, t in self._examples.items():
            shape = list(t.shape[1:])
            for d, dim in enumerate(self._dims):
                if name in dim.axes:
                    shape[dim.axes[name] - 1] = bucket[d]
            per_row += math.prod(shape) * t.element_size()
        share = math.prod(bucket) / math.prod(tops)
        return int(top_batch * (per_row + self._layout.outputs.top_nbytes * share))

    def _check_memory(self) -> None:
        budget = self.options.runner.memory_budget_bytes
        need = sum(self._static_bytes(b) for b in self._table.buckets)
        if budget is not None and need > budget:
            raise ConfigError(
                f"static buffers of {len(self._table.buckets)} buckets x batch "
                f"{self._layout.batch_ladder[-1]} need ~{need / 2**20:.1f} MiB > memory_budget_bytes "
                f"{budget / 2**20:.1f} MiB; drop rungs of a bucketed dim, lower the top batch size or "
                "raise the budget"
            )

    def _register(self, options: BucketOptions) -> str:
        registry = options.runner.registry if options.runner.registry is not None else REGISTRY
        collector = collector_for(registry)
        base = options.name or getattr(self._fn, "__name__", None) or type(self._fn).__name__
        name, suffix = base, 2
        while options.name is None and name in collector.bucket_names():
            name, suffix = f"{base}-{suffix}", suffix + 1
        tops = {BATCH: self._layout.batch_ladder[-1], **{d.name: d.rungs[-1] for d in self._dims}}
        self.stats = BucketStats({dim: new_counts(top) for dim, top in tops.items()})
        collector.add_buckets(name, self.stats)
        return name

    def _bucket_name(self, bucket: Sizes) -> str:
        return "-".join([self.name, *(f"{d.name}{s}" for d, s in zip(self._dims, bucket, strict=True))])

    def _capture_buckets(self) -> dict[Sizes, GraphRunner]:
        """One GraphRunner per bucket, largest volume first (the shared pool is sized by the first)."""
        runners = {}
        for bucket in sorted(self._table.buckets, key=math.prod, reverse=True):
            example = resized_example(self._dims, self.options.mask, self._examples, bucket, rows=1 << 30)
            opts = replace(
                self.options.runner, name=self._bucket_name(bucket), backend=self.backend,
                sizes=self._layout.batch_ladder, max_batch_size=None,
            )  # fmt: skip
            runners[bucket] = GraphRunner(self._fn, (), example, options=opts)
        log.info("bucketed runner %s: %d buckets x %d batch rungs = %d graphs",
                 self.name, len(runners), len(self._layout.batch_ladder), self.num_graphs)  # fmt: skip
        return runners

    def _verify_padding(self) -> None:
        """Each bucket padded along each dim vs eager (buckets/verify.py); a mismatch makes it exact-only."""
        verifier = DimVerifier(
            self._fn, self._dims, self.options.mask, self._examples, self._layout.outputs,
            self.options.runner.tolerance, min(2, self._layout.batch_ladder[-1]),
        )  # fmt: skip
        for bucket, runner in self._runners.items():
            for d, dim in enumerate(self._dims):
                problem = verifier.check(bucket, runner, d)
                if problem is not None:
                    self._table.mark_exact(bucket, d)
                    self._details[bucket] = problem
                    log.info("bucketed runner %s: bucket %s replays exact %s only (%s)",
                             self.name, bucket, dim.name, problem)  # fmt: skip

    # ----- routing and calls ----------------------------------------------------------------------------

    def bucket_of(self, shapes: Mapping[str, Sequence[int]]) -> Bucket | None:
        """The bucket a call with inputs of these shapes runs in, or None when it runs eager.

        Pure in the shapes (given the verification outcome, fixed after construction): a batcher groups
        requests by `bucket.sizes`, and may pad each request to them itself (pad_to).
        """
        sizes = sizes_of_shapes(self._dims, shapes)
        bucket = self._table.route(sizes)
        if bucket is None:
            return None
        batch = min((int(s[0]) for s in shapes.values()), default=1)
        return Bucket(bucket, self._runners[bucket].rung_for(batch))

    def pad_to(self, inputs: Mapping[str, torch.Tensor], bucket: Bucket) -> dict[str, torch.Tensor]:
        """A call's inputs padded to `bucket`'s sizes along every bucketed dim, with the mask."""
        sizes = sizes_of(self._dims, inputs)
        if any(s > b for s, b in zip(sizes, bucket.sizes, strict=True)):
            raise GraphInputError(f"sizes {sizes} do not fit bucket {bucket.sizes}")
        return self._pad(inputs, sizes, bucket.sizes)

    def __call__(self, **inputs: torch.Tensor) -> Any:
        """Run one call: pad every bucketed dim to its bucket, replay, slice back; else eager (counted)."""
        sizes = sizes_of(self._dims, inputs)
        self.record(int(next(iter(inputs.values())).shape[0]), [sizes])
        return self._run(inputs, sizes)

    def run_unrecorded(self, inputs: Mapping[str, torch.Tensor]) -> Any:
        """A call as __call__ runs it, left out of the size histograms: for a batcher that padded requests
        to their bucket itself (pad_to) and records their own sizes with record()."""
        return self._run(inputs, sizes_of(self._dims, inputs))

    def record(self, rows: int, sizes: Sequence[Sizes]) -> None:
        """Count one call of `rows` rows in the size histograms (ladder advice reads them), and each of
        `sizes` once per dim: a call's sizes along the bucketed dims, or a batcher's, one per request it
        stacks (each request padded on its own)."""
        counts = self.stats.sizes
        self.stats.num_calls += 1
        count_size(counts[BATCH], rows)
        for request in sizes:
            for dim, size in zip(self._dims, request, strict=True):
                count_size(counts[dim.name], size)

    def _run(self, inputs: Mapping[str, torch.Tensor], sizes: Sizes) -> Any:
        bucket = self._table.route(sizes)
        if bucket is None:
            above = self._table.is_above_top(sizes)
            self.stats.count_fallback(CallFallback.ABOVE_TOP_RUNG if above else CallFallback.PADDING_MISMATCH)
            with torch.no_grad():  # at its own sizes, with the mask built if the call left it out
                return self._fn(**self._pad(inputs, sizes, sizes))
        padded = self._pad(inputs, sizes, bucket)
        return self._layout.outputs.slice_back(self._runners[bucket](**padded), sizes, bucket)

    def _pad(
        self, inputs: Mapping[str, torch.Tensor], sizes: Sizes, bucket: Sizes
    ) -> dict[str, torch.Tensor]:
        return pad_inputs(self._dims, self.options.mask, self._layout.mask_example, inputs, sizes, bucket)

    # ----- status -----------------------------------------------------------------------------------------

    @property
    def buckets(self) -> tuple[Sizes, ...]:
        """Every bucket, as its rung per bucketed dim."""
        return self._table.buckets

    @property
    def output_axes(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per bucketed dim, the (output leaf, axis) pairs sliced back to a call's size (declared or
        inferred); leaves in flatten order (a dict's insertion order, a tuple's positions)."""
        return self._layout.outputs.per_dim

    def runner(self, bucket: Sizes) -> GraphRunner:
        """The batch-ladder runner of one bucket."""
        return self._runners[bucket]

    def status(self) -> BucketedStatus:
        """Per bucket: its runner's status and the dims it replays exact sizes along only (why)."""
        rows = tuple(
            BucketStatus(
                bucket,
                tuple(self._dims[d].name for d in sorted(self._table.exact_dims(bucket))),
                self._details.get(bucket, ""),
                self._runners[bucket].status(),
            )
            for bucket in self._table.buckets
        )
        return BucketedStatus(self.name, tuple(d.name for d in self._dims), self._layout.batch_ladder, rows)

    def close(self) -> None:
        """Release every bucket's graphs; later calls run eager inside each bucket's runner."""
        for runner in self._runners.values():
            runner.close()
