"""LLMEngine with tensor_parallel_size=2 on 2 GPUs (rank r on cuda:r, NCCL, CUDA graphs captured per
rank with the all-reduces inside): float32 greedy tokens equal one GPU's through the scenario of
tp_scenario.py (batching, abort, choices); a killed worker fails rank 0 within the bound (the
watch thread aborts the NCCL group), and no process is left."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from tp_scenario import COMMON, GREEDY, SEEDED, run_scenario

from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.parallel.ranks import RankFailure
from graphrun.llm.sampling_params import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"),
]
GPU = dict(COMMON, dtype="float32", gpu_memory_utilization=0.5)


def test_two_gpus_give_the_tokens_of_one_with_graphs_captured_per_rank():
    one = run_scenario(LLMEngine(EngineConfig(**GPU)), [GREEDY, SEEDED])  # type: ignore[arg-type]
    engine = LLMEngine(EngineConfig(**GPU, tensor_parallel_size=2))  # type: ignore[arg-type]
    try:
        assert engine.device == torch.device("cuda", 0) and engine.decode_graphs is not None
        assert all(s.captured for r in engine.decode_graphs.runners.values() for s in r.status())
        two = run_scenario(engine, [GREEDY, SEEDED])
        assert sum(r.stats.num_replayed for r in engine.decode_graphs.runners.values()) > 0
    finally:
        engine.close()
    first = {
        seq: next((i for i, (a, b) in enumerate(zip(one[seq], two[seq], strict=False)) if a != b), None)
        for seq in one
    }
    assert two == one, f"first divergence per sequence: {first}"


def test_a_killed_gpu_worker_fails_rank_zero_within_the_bound():
    engine = LLMEngine(EngineConfig(**GPU, tensor_parallel_size=2))  # type: ignore[arg-type]
    (pid,) = engine.worker_pids
    params = SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)
    try:
        for n in (5, 9):
            engine.add_request(list(range(1, n)), params)
        engine.step()
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(RankFailure, match="rank 1 was killed by signal 9"):
            while engine.has_unfinished():
                engine.step()
        assert time.monotonic() - start < 60
    finally:
        engine.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
