import pytest

from graphrun.errors import ConfigError
from graphrun.graphs.sizes import default_ladder, normalize_ladder, padding_report, recommend_ladder, rung_for


def test_default_ladder_is_powers_then_steps_of_eight():
    assert default_ladder(64) == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64)
    assert default_ladder(1) == (1,)
    assert default_ladder(6) == (1, 2, 4, 6)
    assert default_ladder(20) == (1, 2, 4, 8, 16, 20)


def test_default_ladder_rejects_non_positive():
    with pytest.raises(ConfigError, match="max_batch_size"):
        default_ladder(0)


def test_explicit_ladder_sorted_and_validated():
    assert normalize_ladder([8, 1, 8, 4]) == (1, 4, 8)
    with pytest.raises(ConfigError, match="empty"):
        normalize_ladder([])
    with pytest.raises(ConfigError, match="positive"):
        normalize_ladder([0, 4])


def test_rung_for_picks_smallest_rung_at_least_n():
    ladder = (1, 2, 4, 8)
    assert [rung_for(ladder, n) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert rung_for(ladder, 9) is None


def test_padding_report_counts_waste_and_eager():
    report = padding_report((1, 4, 8), [3, 3, 8, 9])
    assert report.num_calls == 4
    assert report.num_rows == 14
    assert report.num_padded_rows == 2
    assert report.num_eager_calls == 1
    assert report.padding_ratio == pytest.approx(2 / 16)


def test_recommend_ladder_minimises_padding():
    sample = [3] * 50 + [7] * 50 + [30] * 5
    ladder = recommend_ladder(sample, max_rungs=3)
    assert ladder == (3, 7, 30)
    assert padding_report(ladder, sample).num_padded_rows == 0
    two = recommend_ladder(sample, max_rungs=2)
    assert two[-1] == 30 and len(two) == 2
    assert padding_report(two, sample).num_padded_rows == min(
        padding_report((3, 30), sample).num_padded_rows, padding_report((7, 30), sample).num_padded_rows
    )
