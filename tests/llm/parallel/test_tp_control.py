"""The control plane of tensor-parallel engines: the KV block count is the fewest any rank holds, and
ranks whose scheduled batches differ raise RankDivergence (on every rank, naming the step and the ranks)
instead of stepping on."""

from __future__ import annotations

import pytest
import torch
from tp_control import compare, fewest_blocks
from tp_ranks import run_ranks

from graphrun.llm.parallel.commands import batch_fingerprint
from graphrun.llm.parallel.control import RankDivergence, compare_fingerprints


def _saved(tmp_path, world_size):
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]


def test_every_rank_takes_the_fewest_kv_blocks_any_rank_holds(tmp_path):
    run_ranks(fewest_blocks, (tmp_path, [900, 640, 700]), 3, tmp_path, timeout_s=60)
    assert _saved(tmp_path, 3) == [640, 640, 640]


def test_different_batches_raise_on_every_rank_and_equal_ones_pass(tmp_path):
    run_ranks(compare, (tmp_path, [42, 43, 42]), 3, tmp_path, timeout_s=60)
    errors = _saved(tmp_path, 3)
    assert all(e is not None and "step 7" in e and "rank(s) [1]" in e for e in errors), errors
    run_ranks(compare, (tmp_path, [42, 42, 42]), 3, tmp_path, timeout_s=60)
    assert _saved(tmp_path, 3) == [None, None, None]


def test_compare_names_every_rank_that_differs_from_rank_zero():
    compare_fingerprints(3, [5, 5])
    with pytest.raises(RankDivergence, match=r"step 3: rank\(s\) \[1, 2\]"):
        compare_fingerprints(3, [5, 6, 7])


def test_the_fingerprint_changes_with_the_kind_the_sequences_and_their_tokens():
    base = batch_fingerprint("decode", [1, 2], [1, 1], [10, 12])
    assert base == batch_fingerprint("decode", [1, 2], [1, 1], [10, 12])
    others = [
        batch_fingerprint("mixed", [1, 2], [1, 1], [10, 12]),
        batch_fingerprint("decode", [2, 1], [1, 1], [10, 12]),
        batch_fingerprint("decode", [1, 2], [1, 2], [10, 12]),
        batch_fingerprint("decode", [1, 2], [1, 1], [10, 13]),
        batch_fingerprint(None, [], [], []),
    ]
    assert base not in others and len(set(others)) == len(others)
