"""Which sizes calls came in: per-size counters on the hot path, folded into Prometheus buckets at scrape.

The ladder advice (advice.py, `graphrun ladder`) needs the sizes traffic had, not only the rungs it
landed on. A call bumps one int in a list indexed by its size (the last slot counts calls above the top
rung), which costs what the runner's other counters cost; the collector folds the list into histogram
buckets whose bounds are every size up to 64, then every 8th up to 256, then every 32nd, plus the top
rung: exact where small sizes differ most, bounded in number (144 buckets for a top of 2048). A scraped
bucket's count is attributed to its upper bound, so a rung recommended there covers every call in it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from graphrun.graphs.status import CallFallback

EXACT_UP_TO = 64
STEP_UP_TO = 256
FINE_STEP = 8
COARSE_STEP = 32


def size_bounds(top: int) -> tuple[int, ...]:
    """Histogram bucket bounds for sizes 1..top (top always among them)."""
    bounds = set(range(1, min(top, EXACT_UP_TO) + 1))
    bounds.update(range(EXACT_UP_TO + FINE_STEP, min(top, STEP_UP_TO) + 1, FINE_STEP))
    bounds.update(range(STEP_UP_TO + COARSE_STEP, top + 1, COARSE_STEP))
    bounds.add(top)
    return tuple(sorted(bounds))


def new_counts(top: int) -> list[int]:
    """Per-size counters for sizes 0..top plus one slot for calls above the top."""
    return [0] * (top + 2)


def count_size(counts: list[int], n: int) -> None:
    """Count one call of size n (above the top goes to the last slot)."""
    counts[n if n < len(counts) - 1 else -1] += 1


def folded(counts: Sequence[int]) -> Iterator[tuple[float, int]]:
    """(upper bound, cumulative count) per bucket, ending with (inf, all calls): Prometheus's form."""
    top = len(counts) - 2
    cumulative, i = 0, 0
    for bound in size_bounds(top) if top >= 1 else ():
        while i <= bound:
            cumulative += counts[i]
            i += 1
        yield float(bound), cumulative
    yield float("inf"), cumulative + sum(counts[i:])


@dataclass(slots=True)
class BucketStats:
    """A bucketed runner's counters: per dim (batch first), the sizes calls had; eager calls by reason."""

    sizes: dict[str, list[int]]
    eager_fallback: dict[CallFallback, int] = field(default_factory=dict)
    num_calls: int = 0

    def count_fallback(self, reason: CallFallback) -> None:
        """Count one call that ran eager outside every bucket."""
        self.eager_fallback[reason] = self.eager_fallback.get(reason, 0) + 1
