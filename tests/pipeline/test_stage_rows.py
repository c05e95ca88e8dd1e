"""Per-request keys in one batched stage call (RowKeys): hits come from the cache, one runner call runs
the rows of the misses, each keyed request is stored on its own, and rows come back in order."""

import pytest
import torch

from graphrun import ConfigError, GraphRunner, Stage
from graphrun.pipeline.rows import RowKeys


@pytest.fixture
def stage(registry):
    # outputs a tuple, to check trees
    runner = GraphRunner(lambda x: (x * 2, x.sum(-1)), (torch.randn(4, 3),), sizes=[1, 2, 4], backend="sim",
                         registry=registry)  # fmt: skip
    return Stage("double", runner, cache_entries=8)


def rows(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1).expand(-1, 3).contiguous()


def test_misses_run_in_one_call_and_each_request_is_stored_on_its_own(stage):
    x = rows(1, 2, 3)  # request a: 1 row, request b: 2 rows
    doubled, sums = stage(x, key=RowKeys((("a", 1), ("b", 2))))
    assert torch.equal(doubled, x * 2) and torch.equal(sums, x.sum(-1))
    assert stage.stats.calls == 1 and len(stage.cache) == 2
    again, _ = stage(rows(7, 8, 9), key=RowKeys((("b", 2), ("a", 1))))  # both hits, in the new order
    assert torch.equal(again, rows(4, 6, 2)) and stage.stats.calls == 1


def test_a_batch_of_hits_misses_and_unkeyed_rows_runs_only_the_rest(stage):
    stage(rows(5), key=RowKeys((("seen", 1),)))
    x = rows(100, 1, 2, 3)  # seen (a hit: its stored rows win over these), new, unkeyed (2 rows)
    doubled, _ = stage(x, key=RowKeys((("seen", 1), ("new", 1), (None, 2))))
    assert torch.equal(doubled, rows(10, 2, 4, 6))
    assert stage.stats.calls == 2 and "new" in stage.cache and len(stage.cache) == 2
    assert stage.runner.stats.num_replayed == 2  # the 3 missing rows: one replay, padded to the rung of 4
    assert (stage.cache.stats.hits, stage.cache.stats.misses) == (1, 2)


def test_stored_rows_are_copies_not_the_runner_buffers(stage):
    first, _ = stage(rows(1), key=RowKeys((("a", 1),)))
    stage(rows(50))  # a later replay overwrites the runner's static outputs
    hit, _ = stage(rows(9), key=RowKeys((("a", 1),)))
    assert torch.equal(hit, rows(2)) and torch.equal(first, rows(2))


def test_row_keys_need_requests_with_rows():
    with pytest.raises(ConfigError, match="RowKeys"):
        RowKeys(())
    with pytest.raises(ConfigError, match="RowKeys"):
        RowKeys((("a", 0),))


def test_a_key_sent_again_with_another_row_count_is_a_miss(stage):
    stage(rows(1, 2), key=RowKeys((("a", 2),)))
    one, _ = stage(rows(7), key=RowKeys((("a", 1),)))  # stored with 2 rows: run again, stored again
    assert torch.equal(one, rows(14)) and stage.stats.calls == 2
    assert (stage.cache.stats.hits, stage.cache.stats.misses) == (0, 2)
    again, _ = stage(rows(0), key=RowKeys((("a", 1),)))
    assert torch.equal(again, rows(14)) and stage.cache.stats.hits == 1
