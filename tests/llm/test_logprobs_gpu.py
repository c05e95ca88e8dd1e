"""Logprobs on a real GPU: the decode-logprobs CUDA graph equals eager, with async scheduling (needs CUDA)."""

import math

import pytest
import torch
from engine_runs import run_all, tiny_cuda_engine

from graphrun.llm.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engines():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    graph = tiny_cuda_engine(0.3)  # the second engine needs a higher cap (tiny_cuda_engine)
    return graph, tiny_cuda_engine(0.6, enforce_eager=True)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_cuda_logprobs_graph_equals_eager(engines, temperature):
    graph, eager = engines
    params = SamplingParams(temperature=temperature, max_tokens=12, ignore_eos=True, seed=1, logprobs=20)
    prompts = [f"gpu logprobs prompt {i}" for i in range(5)]
    got, want = run_all(graph, prompts, params), run_all(eager, prompts, params)
    assert graph.decode_graphs.runners["logprobs"].stats.num_replayed > 0
    for xs, ys in zip(got, want, strict=True):
        assert [x.new_token_id for x in xs] == [y.new_token_id for y in ys]
        for x, y in zip(xs, ys, strict=True):
            assert math.isclose(x.logprobs.logprob, y.logprobs.logprob, abs_tol=1e-4)
            assert len(x.logprobs.top_ids) == 20
            assert list(x.logprobs.top_logprobs) == sorted(x.logprobs.top_logprobs, reverse=True)
