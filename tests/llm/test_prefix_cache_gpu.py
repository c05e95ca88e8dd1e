"""Prefix-cache hits on a real GPU: CUDA graphs for fresh prompts, eager continuation after a hit, async
scheduling; a hit gives the tokens of a miss (needs CUDA)."""

import pytest
import torch
from engine_runs import run_all

from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu


def engine(caching):
    return LLMEngine(
        EngineConfig(
            model="tiny", device="cuda", dtype="float32", max_num_seqs=8, max_model_len=160,
            gpu_memory_utilization=0.3 if caching else 0.5, mixed_prefill_tokens=4,
            enable_prefix_caching=caching,
        )
    )  # fmt: skip


def test_prefix_hits_on_cuda_give_the_tokens_of_misses():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    warm, cold = engine(True), engine(False)
    system = [(3 * i + 1) % 200 + 3 for i in range(70)]
    prompts = [system + [7 + i] * (i + 1) for i in range(6)]
    greedy = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    sampled = SamplingParams(temperature=0.8, top_p=0.9, seed=3, max_tokens=20, ignore_eos=True)
    for params in (greedy, sampled):
        want = [run_all(cold, [p], params)[0] for p in prompts]
        assert [run_all(warm, [p], params)[0] for p in prompts] == want
        assert run_all(warm, prompts, params) == want
    assert warm.scheduler.num_prefix_hit_tokens >= 64 * 10
