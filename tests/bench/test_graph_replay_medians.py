"""graph_replay_medians: CUDA-graph A/B timing shared by the kernel A/Bs (benchmarks/*_ab.py)."""

import pytest
import torch

from graphrun.bench.timing import graph_replay_medians


def test_it_refuses_zero_iterations():
    with pytest.raises(ValueError, match="iters"):
        graph_replay_medians({}, lambda r: None, iters=0, warmup=0)


@pytest.mark.gpu
def test_each_body_replays_on_the_inputs_staged_for_its_round():
    """Each body captured once and replayed warmup + iters times, reading the round's staged input; a
    body doing 64x the work of another takes longer."""
    x = torch.zeros(1 << 20, device="cuda")
    out = {"small": torch.zeros((), device="cuda"), "big": torch.zeros((), device="cuda")}
    seen: list[int] = []

    def stage(r: int) -> None:
        seen.append(r)
        x.fill_(float(r + 1))

    def small() -> None:
        out["small"].add_(x[: 1 << 14].sum())

    def big() -> None:
        for _ in range(64):
            out["big"].add_(x.sum())

    us = graph_replay_medians({"small": small, "big": big}, stage, iters=20, warmup=5)
    torch.cuda.synchronize()
    assert us["big"] > us["small"] > 0
    rounds = sum(range(1, 26))  # the input of round r is r + 1, each round replays every graph once
    # small: one eager run on round 0's input (1) plus its replays
    assert float(out["small"]) == pytest.approx((1 + rounds) * (1 << 14), rel=1e-4)
    assert seen.count(0) == 4  # each body staged before its eager run, then round 0 for both graphs
