"""n choices on a real GPU: CUDA prefill and decode graphs, the partial block copied on the device,
asynchronous scheduling; the choices' tokens equal separate requests seeded seed + j (needs CUDA)."""

from dataclasses import replace

import pytest
import torch
from engine_runs import tiny_cuda_engine

from graphrun.llm.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu


def run(eng, groups):
    out = {seq_id: [] for group in groups for seq_id in group}
    while eng.has_unfinished():
        for o in eng.step():
            out[o.seq_id].append(o.new_token_id)
    return [[out[seq_id] for seq_id in group] for group in groups]


@pytest.fixture(scope="module")
def eng():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return tiny_cuda_engine(0.3)  # one engine for every prompt length: its capture is the slow part


@pytest.mark.parametrize("prompt_len", [37, 33, 100])
def test_choices_on_cuda_graphs_equal_separate_requests(eng, prompt_len):
    assert eng.prefill_graphs is not None and eng.decode_graphs is not None
    prompt = [(5 * i + 3) % 200 + 3 for i in range(prompt_len)]
    params = SamplingParams(temperature=1.0, seed=21, max_tokens=24, ignore_eos=True)
    prefills, forks = eng.num_prefills, eng.num_forks
    (choices,) = run(eng, [eng.add_choices(prompt, params, 4)])
    assert eng.num_prefills - prefills == 1 and eng.num_forks - forks == 3
    separate = run(eng, [[eng.add_request(prompt, replace(params, seed=21 + j))] for j in range(4)])
    assert choices == [tokens for (tokens,) in separate]
    greedy = replace(params, temperature=0.0)
    (same,) = run(eng, [eng.add_choices(prompt, greedy, 3)])
    assert same[0] == same[1] == same[2]
    assert eng.scheduler.block_manager.num_used_blocks == 0
