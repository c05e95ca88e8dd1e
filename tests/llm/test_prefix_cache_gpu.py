"""Prefix-cache hits on a real GPU: CUDA graphs for fresh prompts, eager continuation after a hit, async
scheduling; a hit gives the tokens of a miss (needs CUDA)."""

import pytest
import torch
from engine_runs import run_all, tiny_cuda_engine

from graphrun.llm.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu


def test_prefix_hits_on_cuda_give_the_tokens_of_misses():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    # the 256-token ladder of tiny_cuda_engine: with the whole prefill ladder captured by both engines the
    # test ran past 190 s on an H200
    warm = tiny_cuda_engine(0.3, enable_prefix_caching=True)
    cold = tiny_cuda_engine(0.5, enable_prefix_caching=False)
    system = [(3 * i + 1) % 200 + 3 for i in range(70)]
    prompts = [system + [7 + i] * (i + 1) for i in range(6)]
    greedy = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    sampled = SamplingParams(temperature=0.8, top_p=0.9, seed=3, max_tokens=20, ignore_eos=True)
    for params in (greedy, sampled):
        want = [run_all(cold, [p], params)[0] for p in prompts]
        assert [run_all(warm, [p], params)[0] for p in prompts] == want
        assert run_all(warm, prompts, params) == want
    assert warm.scheduler.num_prefix_hit_tokens >= 64 * 10
