"""NCCL collectives inside real CUDA graphs, and capture agreement, on 2 GPUs (rank r on GPU r).

The same jobs as test_tp_graphs.py with device "cuda": the tiny preset's TP=2 decode step captured per
rank, replays == eager TP=2 == TP=1 on both ranks; a rung failing on rank 1 alone is eager on both.
Functional collectives are captured like kernels (ProcessGroupNCCL leaves captured work out of its
watchdog, pytorch#103503); each wait_tensor sits in the graph of its collective (pytorch#192000).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tp_graphs import SIZES, rank_one_fails, replay_vs_eager
from tp_ranks import run_ranks

from graphrun.graphs.status import CaptureFailure

WORLD_SIZE = 2
ATOL = 1e-3  # fp32 on the GPU, partial sums added in another order than the unsplit model's
NOISE = 1e-2

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < WORLD_SIZE, reason="needs 2 CUDA devices"),
]


def _ranks(out: Path, job: Any, *args: Any) -> list[dict[str, Any]]:
    run_ranks(job, (out, *args), WORLD_SIZE, out, timeout_s=300, backend="nccl")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


def test_nccl_collectives_replay_inside_cuda_graphs(tmp_path):
    for rank in _ranks(tmp_path, replay_vs_eager, "cuda"):
        assert rank["status"] == [(n, True, None) for n in SIZES]
        for graph, eager, single in rank["calls"]:
            torch.testing.assert_close(graph, eager, atol=ATOL, rtol=0)
            torch.testing.assert_close(graph, single, atol=ATOL, rtol=0)


@pytest.mark.parametrize("how", ["verify", "budget"])
def test_a_rung_rank_one_fails_is_eager_on_both_gpus(tmp_path, how):
    ranks = _ranks(tmp_path, rank_one_fails, how, "cuda")
    failed = CaptureFailure.VERIFICATION if how == "verify" else CaptureFailure.MEMORY_BUDGET
    eager_rungs = {4} if how == "verify" else set(SIZES)
    for rank, reason in zip(ranks, (CaptureFailure.PEER_RANK, failed), strict=True):
        assert {n for n, captured, _ in rank["status"] if not captured} == eager_rungs
        assert rank["failed"] == {reason: len(eager_rungs)}
        for n, got, single in rank["calls"]:
            atol = NOISE if how == "verify" and n > 2 and rank is ranks[1] else ATOL
            torch.testing.assert_close(got, single, atol=atol, rtol=0)
