"""The capture-size ladder: which batch sizes get a graph, and how much padding traffic will cost.

Pure functions, no torch: the scheduler and the runner must agree on the ladder, so it is computed in
one place. A call of batch n runs on the smallest rung >= n (padding n up to it), or eager when n is
above the top rung.
"""

from __future__ import annotations

import bisect
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass

from graphrun.errors import ConfigError

DEFAULT_SMALL_RUNGS = (1, 2, 4, 8)
DEFAULT_STEP = 8


def default_ladder(max_batch_size: int, step: int = DEFAULT_STEP) -> tuple[int, ...]:
    """1, 2, 4, 8, then every `step` up to `max_batch_size` (which is always the top rung)."""
    if max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if step < 1:
        raise ConfigError(f"step must be >= 1, got {step}")
    rungs = {s for s in DEFAULT_SMALL_RUNGS if s <= max_batch_size}
    rungs.update(range(DEFAULT_SMALL_RUNGS[-1] + step, max_batch_size + 1, step))
    rungs.add(max_batch_size)
    return tuple(sorted(rungs))


def normalize_ladder(sizes: Iterable[int]) -> tuple[int, ...]:
    """Validate an explicit list of capture sizes and return it sorted and de-duplicated."""
    rungs = sorted(set(sizes))
    if not rungs:
        raise ConfigError("capture sizes must not be empty; pass at least one batch size, e.g. [1]")
    bad = [s for s in rungs if not isinstance(s, int) or isinstance(s, bool) or s < 1]
    if bad:
        raise ConfigError(f"capture sizes must be positive integers, got {bad}")
    return tuple(rungs)


def rung_for(ladder: Sequence[int], n: int) -> int | None:
    """Smallest rung >= n, or None when n is above the top rung (the call then runs eager)."""
    i = bisect.bisect_left(ladder, n)
    return ladder[i] if i < len(ladder) else None


def padded_samples(lowest: int, rung: int, exact: Container[int]) -> tuple[int, ...]:
    """Batch sizes to check `rung` at, padded: the smallest it serves and one in the middle of its interval.

    It serves lowest .. rung - 1, except sizes that are rungs themselves (`exact`: they replay their own).
    """
    served = [n for n in range(lowest, rung) if n not in exact]
    if not served:
        return ()
    middle = served[len(served) // 2]
    return (served[0],) if middle == served[0] else (served[0], middle)


@dataclass(frozen=True, slots=True)
class PaddingReport:
    """Padding cost of a ladder on a traffic sample: rows computed but thrown away."""

    num_calls: int
    num_rows: int
    num_padded_rows: int
    num_eager_calls: int

    @property
    def padding_ratio(self) -> float:
        """Padded rows over all rows the graphs computed (0 = no waste)."""
        total = self.num_rows + self.num_padded_rows
        return self.num_padded_rows / total if total else 0.0


def padding_report(ladder: Sequence[int], batch_sizes: Iterable[int]) -> PaddingReport:
    """Measure how much a traffic sample would be padded on this ladder."""
    return padding_report_counts(ladder, _count_sizes(batch_sizes))


def padding_report_counts(ladder: Sequence[int], counts: Mapping[int, int]) -> PaddingReport:
    """padding_report for a histogram {batch size: number of calls} (a scraped histogram, say)."""
    calls = rows = padded = eager = 0
    for n, k in counts.items():
        calls += k
        rung = rung_for(ladder, n)
        if rung is None:
            eager += k
            continue
        rows += n * k
        padded += (rung - n) * k
    return PaddingReport(calls, rows, padded, eager)


def recommend_ladder(batch_sizes: Iterable[int], max_rungs: int) -> tuple[int, ...]:
    """Pick at most `max_rungs` rungs that minimise padded rows for a traffic sample.

    The largest size seen is always a rung so that no call of the sample falls back to eager.
    """
    return recommend_ladder_counts(_count_sizes(batch_sizes), max_rungs)


def recommend_ladder_counts(counts: Mapping[int, int], max_rungs: int) -> tuple[int, ...]:
    """recommend_ladder for a histogram {size: number of calls}; the optimum for every rung count
    up to `max_rungs` is `best_ladders(counts, max_rungs)`, of which this is the cheapest."""
    ladders = best_ladders(counts, max_rungs)
    return min(ladders, key=lambda rungs: (padding_report_counts(rungs, counts).num_padded_rows, len(rungs)))


def best_ladders(counts: Mapping[int, int], max_rungs: int) -> list[tuple[int, ...]]:
    """For r = 1 .. min(max_rungs, distinct sizes): the r-rung ladder with the fewest padded rows.

    Exact dynamic programme over the m distinct sizes seen (a rung below the next size seen is never
    better than that size), O(max_rungs * m^2) with prefix sums; the largest size seen is always the top.
    """
    if max_rungs < 1:
        raise ConfigError(f"max_rungs must be >= 1, got {max_rungs}")
    sizes = sorted(n for n, k in counts.items() if k > 0)
    if not sizes:
        raise ConfigError("a ladder recommendation needs at least one size with a count above 0")
    bad = [n for n in sizes if not isinstance(n, int) or n < 1]
    if bad:
        raise ConfigError(f"sizes in a histogram must be positive integers, got {bad}")
    m, k = len(sizes), min(max_rungs, len(sizes))
    calls, rows = [0], [0]  # prefix sums of counts and of size * count
    for n in sizes:
        calls.append(calls[-1] + counts[n])
        rows.append(rows[-1] + n * counts[n])

    def cost(lo: int, hi: int) -> int:  # padding when sizes[lo..hi] all run on rung sizes[hi]
        return sizes[hi] * (calls[hi + 1] - calls[lo]) - (rows[hi + 1] - rows[lo])

    inf = float("inf")
    best = [[inf] * m for _ in range(k + 1)]  # best[r][i]: sizes[0..i] covered by r rungs, top = sizes[i]
    choice = [[-1] * m for _ in range(k + 1)]
    for i in range(m):
        best[1][i] = cost(0, i)
    for r in range(2, k + 1):
        for i in range(r - 1, m):
            for j in range(r - 2, i):
                c = best[r - 1][j] + cost(j + 1, i)
                if c < best[r][i]:
                    best[r][i], choice[r][i] = c, j
    ladders = []
    for r_top in range(1, k + 1):
        rungs, i, r = [], m - 1, r_top
        while i >= 0 and r >= 1:
            rungs.append(sizes[i])
            i, r = choice[r][i], r - 1
        ladders.append(tuple(sorted(rungs)))
    return ladders


def _count_sizes(sizes: Iterable[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for n in sizes:
        counts[n] = counts.get(n, 0) + 1
    return counts
