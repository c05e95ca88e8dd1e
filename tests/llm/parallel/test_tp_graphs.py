"""Collectives inside captured graphs, and capture agreement across ranks (2 gloo ranks, sim backend).

Each rank captures the tiny preset's TP=2 decode step at every rung; replays on fresh inputs equal eager
TP=2 and the unsplit model on both ranks, which holds only if each replay re-runs the all-reduces and
the logits all-gather. A rung that fails on rank 1 alone runs eager on both ranks (RunnerOptions.agree).
World size 1 issues no collective at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from tp_graphs import (
    CALL_SIZES,
    SIZES,
    DecodeStep,
    decode_inputs,
    rank_one_fails,
    replay_vs_eager,
    sim_collectives,
)
from tp_greedy import tiny_model
from tp_ranks import run_ranks

from graphrun.graphs.status import CallFallback, CaptureFailure
from graphrun.llm.parallel.group import ParallelGroup

WORLD_SIZE = 2
ATOL = 1e-4
NOISE = 1e-2  # tp_graphs.decode_step's noise on rank 1 at the failed rung


def _load(out: Path) -> list[dict[str, Any]]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("tp-graphs")
    run_ranks(replay_vs_eager, (out,), WORLD_SIZE, out)
    return _load(out)


def test_every_rung_captures_on_both_ranks(replayed):
    for rank in replayed:
        assert rank["status"] == [(n, True, None) for n in SIZES]
        assert rank["replayed"] == len(CALL_SIZES)


def test_replay_equals_eager_and_one_rank_on_both_ranks(replayed):
    for rank in replayed:
        for graph, eager, single in rank["calls"]:
            torch.testing.assert_close(graph, eager, atol=ATOL, rtol=0)
            torch.testing.assert_close(graph, single, atol=ATOL, rtol=0)


def test_replays_follow_new_inputs(replayed):
    """Two calls of 4 on different inputs: the second replay's logits are its own, not the first's."""
    calls = replayed[0]["calls"]
    first, second = (calls[i][0] for i, n in enumerate(CALL_SIZES) if n == 4)
    assert (first - second).abs().max() > 100 * ATOL  # and each equals TP=1 on its own inputs (above)


def test_both_ranks_give_the_same_logits(replayed):
    for (a, _, _), (b, _, _) in zip(replayed[0]["calls"], replayed[1]["calls"], strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_the_simulator_replays_functional_and_plain_collectives(tmp_path):
    """Ranks hold x = rank + 1 at capture, 10 * (rank + 1) at replay: sums over both ranks, gathers in
    rank order (the plain dist.all_reduce included, which the recorder once dropped)."""
    run_ranks(sim_collectives, (tmp_path,), WORLD_SIZE, tmp_path)
    for rank in _load(tmp_path):
        for scale, (summed, gathered, plain) in ((1, rank["captured"]), (10, rank["replayed"])):
            assert torch.equal(summed, torch.full((2, 3), 6.0 * scale))
            assert torch.equal(plain, torch.full((2, 3), 9.0 * scale))
            assert gathered[0].tolist() == [1.0 * scale] * 3 + [2.0 * scale + 1] * 3


def test_a_rung_that_fails_verification_on_rank_one_is_eager_on_both(tmp_path):
    run_ranks(rank_one_fails, (tmp_path, "verify"), WORLD_SIZE, tmp_path)
    ranks = _load(tmp_path)
    reasons = (CaptureFailure.PEER_RANK, CaptureFailure.VERIFICATION)
    for rank, reason in zip(ranks, reasons, strict=True):
        assert rank["status"] == [(1, True, None), (2, True, None), (4, False, reason)]
        assert rank["failed"] == {reason: 1}
        assert rank["fallback"] == {CallFallback.RUNG_NOT_CAPTURED: CALL_SIZES.count(3) + CALL_SIZES.count(4)}
        assert any(reason.value in line and "batch size 4" in line for line in rank["warnings"])
        for n, got, single in rank["calls"]:
            atol = NOISE if n > 2 and rank is ranks[1] else ATOL
            torch.testing.assert_close(got, single, atol=atol, rtol=0)


def test_a_memory_budget_that_only_rank_one_misses_leaves_both_eager(tmp_path):
    run_ranks(rank_one_fails, (tmp_path, "budget"), WORLD_SIZE, tmp_path)
    ranks = _load(tmp_path)
    reasons = (CaptureFailure.PEER_RANK, CaptureFailure.MEMORY_BUDGET)
    for rank, reason in zip(ranks, reasons, strict=True):
        assert rank["status"] == [(n, False, reason) for n in SIZES]
        assert rank["failed"] == {reason: len(SIZES)}
        for _, got, single in rank["calls"]:
            torch.testing.assert_close(got, single, atol=ATOL, rtol=0)


def test_a_padded_check_that_fails_on_rank_one_leaves_both_ranks_exact_size(tmp_path):
    """Rank 1 couples rows: its padded replays differ from eager; both ranks replay exact sizes only."""
    run_ranks(rank_one_fails, (tmp_path, "couple"), WORLD_SIZE, tmp_path)
    ranks = _load(tmp_path)
    padding = CaptureFailure.PADDING_MISMATCH
    for rank in ranks:
        assert rank["status"] == [(1, True, None), (2, True, None), (4, True, padding)]
        assert rank["fallback"] == {CallFallback.PADDING_MISMATCH: CALL_SIZES.count(3)}
        assert any("another tensor-parallel rank" in line for line in rank["warnings"]) is (rank is ranks[0])
        for _, got, single in rank["calls"]:
            torch.testing.assert_close(got, single, atol=NOISE if rank is ranks[1] else ATOL, rtol=0)


class _Collectives(TorchDispatchMode):
    """Counts the collective ops that run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += func.namespace in ("c10d", "_c10d_functional")
        return func(*args, **(kwargs or {}))


@torch.inference_mode()
def test_one_rank_runs_no_collective():
    model = tiny_model(ParallelGroup.single())
    inputs = decode_inputs(2, torch.Generator().manual_seed(0), model.config.vocab_size)
    with _Collectives() as seen:
        DecodeStep(model)(*inputs)
    assert seen.count == 0
