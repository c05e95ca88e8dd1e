"""Latency percentiles, one definition for every report (the serving benchmark and the serve trace)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile, interpolated between the closest ranks (numpy's default); None if empty."""
    return _at(sorted(values), q) if values else None


def _at(ordered: Sequence[float], q: float) -> float:
    """percentile() of values already sorted (not empty)."""
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50, p90, p99 and mean of latencies given in seconds, in milliseconds (None when there are none)."""
    ordered = sorted(seconds)  # once for every percentile
    out: dict[str, float | None] = {f"p{q}": _at(ordered, q) * 1e3 if ordered else None for q in PERCENTILES}
    out["mean"] = statistics.fmean(seconds) * 1e3 if seconds else None
    return out
