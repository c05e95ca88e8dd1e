"""Padded-size verification along bucketed dims: a padded call must give eager's answer on real positions.

The batch dim is verified by each bucket's GraphRunner (graphs/verify.py). Along another dim, padding is
correct only when the model ignores padded positions where it should (attention masked, pooling over
real positions only). So each bucket is replayed, through its runner exactly as a call runs it, on
fresh inputs whose size along one dim is below the bucket's rung (the smallest size it serves and one
in the middle: sizes.padded_samples), padded as a call pads them, sliced back, and compared with eager
at the real size (dtype tolerance). A model that sums over all positions ignoring the mask fails; that
bucket then replays calls of exactly its size along that dim only, and smaller sizes go to the next
bucket that accepts padding, else eager (routing.py), as the batch dim does.

Inputs are drawn like the example's (graphs/verify.random_like: float mean/std, integer range); the
mask is 1 on every real position. The check runs at two rows (one when the batch ladder tops at 1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from graphrun.graphs.buckets.shapes import OutputAxes, Sizes, mask_like, pad_axis, pad_inputs
from graphrun.graphs.buckets.spec import BucketDim
from graphrun.graphs.sizes import padded_samples
from graphrun.graphs.verify import VERIFY_SEED, mismatch, random_like

log = logging.getLogger(__name__)

Replay = Callable[..., Any]


class DimVerifier:
    """Checks one bucket padded along each dim; answers the first mismatch per dim."""

    def __init__(
        self,
        fn: Callable[..., Any],
        dims: Sequence[BucketDim],
        mask: str | None,
        examples: Mapping[str, torch.Tensor],
        outputs: OutputAxes,
        tolerance: tuple[float, float] | None,
        batch: int,
    ) -> None:
        self._fn = fn
        self._dims = dims
        self._mask = mask
        self._examples = examples
        self._outputs = outputs
        self._tolerance = tolerance
        self._batch = batch

    def check(self, bucket: Sizes, replay: Replay, dim: int) -> str | None:
        """None when `bucket` padded along `dim` equals eager at every sampled size, else why not."""
        rungs = self._dims[dim].rungs
        index = rungs.index(bucket[dim])
        lowest = rungs[index - 1] + 1 if index else 1
        for size in padded_samples(lowest, bucket[dim], exact=set(rungs)):
            sizes = (*bucket[:dim], size, *bucket[dim + 1 :])
            problem = self._check_at(bucket, sizes, replay)
            if problem is not None:
                return f"{self._dims[dim].name} {size} padded to {bucket[dim]}: {problem}"
        return None

    def _check_at(self, bucket: Sizes, sizes: Sizes, replay: Replay) -> str | None:
        seed = VERIFY_SEED + 7919 * sum(sizes) + sum(bucket)
        inputs = self.draw(sizes, torch.Generator().manual_seed(seed))
        try:
            with torch.no_grad():
                want = self._outputs.spec.flatten(self._fn(**inputs))
        except Exception as exc:  # eager refuses where a padded replay would answer: never replay that
            return f"eager raised {type(exc).__name__}: {exc}"
        padded = pad_inputs(self._dims, self._mask, None, inputs, sizes, bucket)
        try:
            got = self._outputs.spec.flatten(self._outputs.slice_back(replay(**padded), sizes, bucket))
        except Exception as exc:
            return f"replay raised {type(exc).__name__}: {exc}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            if isinstance(g, torch.Tensor):
                problem = mismatch(g, w, self._tolerance)
                if problem is not None:
                    return f"output {i}: {problem}"
        return None

    def draw(self, sizes: Sizes, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Fresh inputs of `self._batch` rows at `sizes`, drawn like the examples; the mask all ones."""
        inputs = {}
        for name, example in self._examples.items():
            shape = [self._batch, *example.shape[1:]]
            carried = {dim.axes[name]: sizes[d] for d, dim in enumerate(self._dims) if name in dim.axes}
            for axis, size in carried.items():
                shape[axis] = size
            if name == self._mask:
                inputs[name] = mask_like(example, self._batch, {a: (s, s) for a, s in carried.items()})
            else:
                inputs[name] = random_like(example, shape, gen)
        return inputs


def resized_example(
    dims: Sequence[BucketDim], mask: str | None, examples: Mapping[str, torch.Tensor], sizes: Sizes, rows: int
) -> dict[str, torch.Tensor]:
    """The examples at `rows` rows (at most their own) and every dim at `sizes`: padded or cut."""
    out = {}
    for name, t in examples.items():
        t = t.narrow(0, 0, min(rows, t.shape[0]))
        for d, dim in enumerate(dims):
            if name in dim.axes:
                t = pad_axis(t, dim.axes[name], sizes[d], 0 if name == mask else dim.pad_value)
        out[name] = t
    return out
