"""Logprobs on a real GPU: the decode-logprobs CUDA graph equals eager, with async scheduling (needs CUDA)."""

import math

import pytest
from engine_runs import cuda_graph_and_eager, run_outputs

from graphrun.llm.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engines():
    return cuda_graph_and_eager()


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_cuda_logprobs_graph_equals_eager(engines, temperature):
    graph, eager = engines
    params = SamplingParams(temperature=temperature, max_tokens=12, ignore_eos=True, seed=1, logprobs=20)
    prompts = [f"gpu logprobs prompt {i}" for i in range(5)]
    got, want = run_outputs(graph, prompts, params), run_outputs(eager, prompts, params)
    assert graph.decode_graphs.runners["logprobs"].stats.num_replayed > 0
    for xs, ys in zip(got, want, strict=True):
        assert [x.new_token_id for x in xs] == [y.new_token_id for y in ys]
        for x, y in zip(xs, ys, strict=True):
            assert math.isclose(x.logprobs.logprob, y.logprobs.logprob, abs_tol=1e-4)
            assert len(x.logprobs.top_ids) == 20
            assert list(x.logprobs.top_logprobs) == sorted(x.logprobs.top_logprobs, reverse=True)
