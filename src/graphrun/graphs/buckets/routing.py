"""Which bucket a call of given sizes runs in: pure, no torch.

Every bucket is one combination of rungs, one per bucketed dim. A bucket may be padded along a dim only
if verification found padding safe there; a bucket that failed replays only calls whose size along that
dim is exactly its rung. A call goes to the bucket of least volume (the product of its rungs) among
those that cover its sizes and accept its padding; with none, it runs eager.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

Sizes = tuple[int, ...]


class BucketTable:
    """The buckets (products of per-dim rungs) and, per bucket, the dims it may not be padded along."""

    def __init__(self, rungs: Sequence[Sequence[int]]) -> None:
        self.rungs = tuple(tuple(r) for r in rungs)
        self.buckets: tuple[Sizes, ...] = tuple(itertools.product(*self.rungs))
        self._exact: dict[Sizes, set[int]] = {}  # bucket -> dims (indices) it is exact-size only along
        self._routes: dict[Sizes, Sizes | None] = {}

    def mark_exact(self, bucket: Sizes, dim: int) -> None:
        """Padding along `dim` differs from eager in `bucket`: it replays exact sizes along it only."""
        self._exact.setdefault(bucket, set()).add(dim)
        self._routes.clear()

    def exact_dims(self, bucket: Sizes) -> frozenset[int]:
        """The dims `bucket` may not be padded along."""
        return frozenset(self._exact.get(bucket, ()))

    def route(self, sizes: Sizes) -> Sizes | None:
        """The bucket for a call of `sizes`, or None (eager): above a top rung, or no bucket may pad it."""
        if sizes in self._routes:
            return self._routes[sizes]
        route = self._route(sizes)
        if len(self._routes) < 1 << 16:  # bounded: a route is cheap to recompute
            self._routes[sizes] = route
        return route

    def _route(self, sizes: Sizes) -> Sizes | None:
        candidates = [[r for r in rungs if r >= s] for rungs, s in zip(self.rungs, sizes, strict=True)]
        best: Sizes | None = None
        for bucket in itertools.product(*candidates):
            exact = self._exact.get(bucket, ())
            if any(bucket[d] != sizes[d] for d in exact):
                continue
            if best is None or math.prod(bucket) < math.prod(best):
                best = bucket
        return best

    def is_above_top(self, sizes: Sizes) -> bool:
        """True when some size is above its dim's top rung (no bucket can take it, padded or not)."""
        return any(s > rungs[-1] for rungs, s in zip(self.rungs, sizes, strict=True))
