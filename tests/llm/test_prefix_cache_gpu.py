"""Prefix-cache hits on a real GPU: CUDA graphs for fresh prompts, eager continuation after a hit, async
scheduling; a hit gives the tokens of a miss (needs CUDA)."""

import pytest
import torch

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


def run(eng, prompts, params):
    ids = [eng.add_request(p, params) for p in prompts]
    out = {i: [] for i in ids}
    while eng.has_unfinished():
        for o in eng.step():
            out[o.seq_id].append(o.new_token_id)
    return [out[i] for i in ids]


def test_prefix_hits_on_cuda_give_the_tokens_of_misses():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    warm, cold = engine(True), engine(False)
    system = [(3 * i + 1) % 200 + 3 for i in range(70)]
    prompts = [system + [7 + i] * (i + 1) for i in range(6)]
    greedy = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    sampled = SamplingParams(temperature=0.8, top_p=0.9, seed=3, max_tokens=20, ignore_eos=True)
    for params in (greedy, sampled):
        want = [run(cold, [p], params)[0] for p in prompts]
        assert [run(warm, [p], params)[0] for p in prompts] == want
        assert run(warm, prompts, params) == want
    assert warm.scheduler.num_prefix_hit_tokens >= 64 * 10
