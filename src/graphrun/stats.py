"""Latency percentiles, one definition for every report (the serving benchmark and the serve trace)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile, interpolated between the closest ranks (numpy's default); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50, p90, p99 and mean of latencies given in seconds, in milliseconds (None when there are none)."""
    out: dict[str, float | None] = {}
    for q in PERCENTILES:
        value = percentile(seconds, q)
        out[f"p{q}"] = None if value is None else value * 1e3
    out["mean"] = statistics.fmean(seconds) * 1e3 if seconds else None
    return out
