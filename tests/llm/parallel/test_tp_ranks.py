"""The test harness's spawned ranks: a failing rank fails the caller, a hung one is killed at the
deadline, and no process outlives run_ranks."""

from __future__ import annotations

import time

import pytest
import torch.multiprocessing as mp
from tp_ranks import run_ranks

from graphrun.llm.parallel.group import ParallelGroup


def fail_on_rank_one(group: ParallelGroup) -> None:
    if group.rank == 1:
        raise RuntimeError("rank one broke")


def hang(group: ParallelGroup) -> None:
    time.sleep(120)


def test_a_rank_that_raises_fails_the_caller(tmp_path):
    with pytest.raises(mp.ProcessRaisedException, match="rank one broke"):
        run_ranks(fail_on_rank_one, (), 2, tmp_path)
    assert mp.active_children() == []


def test_a_hung_rank_is_killed_at_the_deadline(tmp_path):
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="still running"):
        run_ranks(hang, (), 2, tmp_path, timeout_s=3)
    assert time.monotonic() - start < 60
    assert mp.active_children() == []
