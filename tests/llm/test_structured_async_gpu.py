"""Structured output on a real GPU with asynchronous scheduling: each structured decode step replays the
structured forward graph, then a mask graph once the previous step's tokens are in, and the tokens equal
synchronous scheduling's on the same CUDA graphs (needs CUDA)."""

import pytest
import torch
from engine_runs import tiny_cuda_engine
from test_structured_async import both_ways, check_constraints, requests, tokens_and_reasons

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def graph():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return tiny_cuda_engine(0.3)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_cuda_async_structured_tokens_equal_sync(graph, temperature):
    runners = graph.decode_graphs.runners
    mask = "mask-greedy" if temperature == 0 else "mask-sampling"
    before = runners[mask].stats.num_replayed
    reqs = requests(temperature)
    fast, plain = both_ways(graph, reqs)
    assert tokens_and_reasons(fast) == tokens_and_reasons(plain)
    assert runners["structured"].stats.num_replayed > 0
    assert runners[mask].stats.num_replayed > before
    check_constraints(graph, reqs, fast)
