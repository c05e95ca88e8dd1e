"""The capture-size ladder: which batch sizes get a graph, and how much padding traffic will cost.

Pure functions, no torch: the scheduler and the runner must agree on the ladder, so it is computed in
one place. A call of batch n runs on the smallest rung >= n (padding n up to it), or eager when n is
above the top rung.
"""

from __future__ import annotations

import bisect
from collections.abc import Container, Iterable, Sequence
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
    calls = rows = padded = eager = 0
    for n in batch_sizes:
        calls += 1
        rung = rung_for(ladder, n)
        if rung is None:
            eager += 1
            continue
        rows += n
        padded += rung - n
    return PaddingReport(calls, rows, padded, eager)


def recommend_ladder(batch_sizes: Iterable[int], max_rungs: int) -> tuple[int, ...]:
    """Pick at most `max_rungs` rungs that minimise padded rows for a traffic sample.

    Exact dynamic programme over the distinct sizes seen; the largest size seen is always a rung so that
    no call of the sample falls back to eager.
    """
    if max_rungs < 1:
        raise ConfigError(f"max_rungs must be >= 1, got {max_rungs}")
    counts: dict[int, int] = {}
    for n in batch_sizes:
        counts[n] = counts.get(n, 0) + 1
    sizes = sorted(counts)
    if not sizes:
        raise ConfigError("recommend_ladder needs at least one batch size in the sample")
    k = min(max_rungs, len(sizes))
    m = len(sizes)

    def cost(lo: int, hi: int) -> int:  # padding when sizes[lo..hi] all run on rung sizes[hi]
        return sum((sizes[hi] - sizes[j]) * counts[sizes[j]] for j in range(lo, hi + 1))

    inf = float("inf")
    best = [[inf] * m for _ in range(k + 1)]  # best[r][i]: sizes[0..i] covered by r rungs, top = sizes[i]
    choice = [[-1] * m for _ in range(k + 1)]
    for i in range(m):
        best[1][i] = cost(0, i)
    for r in range(2, k + 1):
        for i in range(m):
            for j in range(i):
                c = best[r - 1][j] + cost(j + 1, i)
                if c < best[r][i]:
                    best[r][i], choice[r][i] = c, j
    r = min(range(1, k + 1), key=lambda rr: best[rr][m - 1])
    rungs, i = [], m - 1
    while i >= 0 and r >= 1:
        rungs.append(sizes[i])
        i, r = choice[r][i], r - 1
    return tuple(sorted(rungs))
