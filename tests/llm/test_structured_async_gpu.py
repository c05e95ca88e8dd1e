"""Structured output on a real GPU with asynchronous scheduling: each structured decode step replays the
structured forward graph, then a mask graph once the previous step's tokens are in, and the tokens equal
synchronous scheduling's on the same CUDA graphs; an engine that captures those graphs on first use, in
the background while its structured steps run, gives the same tokens (needs CUDA)."""

import pytest
import torch
from engine_runs import tiny_cuda_engine
from test_structured_async import both_ways, check_constraints, requests, run, tokens_and_reasons

from graphrun.graphs.status import CallFallback
from graphrun.llm import background_graphs

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def graph():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    eng = tiny_cuda_engine(0.3)
    eng.capture_structured_graphs()  # now, not at the first structured step (the lazy test below)
    return eng


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


def test_cuda_structured_graphs_captured_on_first_use_keep_the_tokens(graph, monkeypatch):
    """A rung after every step (the pass's share raised to all of it): the structured kinds are captured
    between steps while a step is in flight, and the tokens are those of the engine that had them."""
    monkeypatch.setattr(background_graphs, "BUSY_CAPTURE_SHARE", 1.0)
    lazy = tiny_cuda_engine(0.6)  # a second engine in the process needs a higher cap (tiny_cuda_engine)
    assert "structured" not in lazy.decode_graphs.runners
    reqs = requests(0.9)
    got = tokens_and_reasons(run(lazy, reqs))
    assert got == tokens_and_reasons(run(graph, reqs))
    runners = lazy.decode_graphs.runners
    assert runners["mask-sampling"].stats.eager_fallback.get(CallFallback.CAPTURING, 0) > 0
    assert runners["mask-sampling"].stats.num_replayed > 0
    assert all(s.captured for kind in ("structured", "mask-sampling") for s in runners[kind].status())
