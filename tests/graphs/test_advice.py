"""Ladder advice: the recommendation is the optimum (checked by brute force), per dim and split over dims."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from graphrun.errors import ConfigError
from graphrun.graphs.advice import DimAdvice, advise
from graphrun.graphs.size_histogram import count_size, folded, new_counts, size_bounds
from graphrun.graphs.sizes import best_ladders, padding_report_counts, recommend_ladder_counts


def brute_force(counts: dict[int, int], max_rungs: int) -> int:
    """Least padded rows over every ladder of <= max_rungs rungs drawn from the sizes seen (top included)."""
    sizes = sorted(counts)
    best = math.inf
    for r in range(max_rungs):
        for rest in itertools.combinations(sizes[:-1], r):
            best = min(best, padding_report_counts((*rest, sizes[-1]), counts).num_padded_rows)
    return int(best)


def test_known_optimum():
    counts = {4: 10, 16: 10, 64: 10, 3: 1}
    assert recommend_ladder_counts(counts, 3) == (4, 16, 64)  # 3 pads by one row: cheapest
    assert recommend_ladder_counts(counts, 4) == (3, 4, 16, 64)  # no padding at all
    advice = advise({"batch": counts}, max_graphs=3, current={"batch": (8, 64)})
    (dim,) = advice.dims
    assert dim.recommended == (4, 16, 64)
    assert dim.current_report.num_padded_rows == 10 * 4 + 1 * 5 + 10 * 48
    assert dim.recommended_report.num_padded_rows == 1


@pytest.mark.parametrize("seed", range(8))
def test_dynamic_programme_equals_brute_force(seed):
    rng = random.Random(seed)
    counts = {rng.randint(1, 40): rng.randint(1, 50) for _ in range(9)}
    for k in (1, 2, 3, 4):
        ladders = best_ladders(counts, k)
        assert len(ladders[-1]) == min(k, len(counts))
        got = padding_report_counts(recommend_ladder_counts(counts, k), counts).num_padded_rows
        assert got == brute_force(counts, k), (counts, k)


def test_two_dims_split_the_budget_by_least_padded_volume():
    batch = {1: 60, 2: 10, 8: 30}
    length = {10: 40, 12: 5, 50: 20, 128: 4}
    advice = advise({"batch": batch, "length": length}, max_graphs=6)
    assert advice.num_graphs_recommended <= 6

    def volume(lb: tuple[int, ...], ll: tuple[int, ...]) -> float:
        return DimAdvice.mean_rung(padding_report_counts(lb, batch)) * DimAdvice.mean_rung(
            padding_report_counts(ll, length)
        )

    best = min(
        volume(lb, ll)
        for lb in best_ladders(batch, 6)
        for ll in best_ladders(length, 6)
        if len(lb) * len(ll) <= 6
    )
    got = volume(*(d.recommended for d in advice.dims))
    assert got == pytest.approx(best)
    assert advice.waste(True) < advice.waste(False) or advice.num_graphs_current > 6
    assert "all" in advice.table()


def test_memory_cap_leaves_larger_sizes_eager():
    advice = advise({"batch": {1: 5, 8: 5, 64: 2}}, max_graphs=4, max_size={"batch": 16})
    (dim,) = advice.dims
    assert dim.recommended == (1, 8)
    assert dim.recommended_report.num_eager_calls == 2
    with pytest.raises(ConfigError, match="cap 0"):
        advise({"batch": {4: 1}}, max_size={"batch": 0})


def test_histogram_bounds_and_folding():
    assert size_bounds(10) == tuple(range(1, 11))
    bounds = size_bounds(2048)
    assert bounds[63] == 64 and 72 in bounds and 65 not in bounds and 288 in bounds and bounds[-1] == 2048
    assert len(bounds) < 150
    counts = new_counts(100)
    for n in (1, 1, 65, 70, 100, 101, 500):
        count_size(counts, n)
    folded_counts = dict(folded(counts))
    assert folded_counts[1.0] == 2 and folded_counts[64.0] == 2 and folded_counts[72.0] == 4
    assert folded_counts[100.0] == 5 and folded_counts[float("inf")] == 7
