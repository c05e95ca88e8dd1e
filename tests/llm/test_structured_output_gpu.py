"""Structured output on a real GPU: the decode-structured CUDA graph gives eager's tokens, every answer
parses and validates, and free requests beside grammar ones keep their tokens (needs CUDA)."""

import json

import pytest
from engine_runs import cuda_graph_and_eager
from test_structured_output import PROMPTS, SCHEMA, run_all, valid

from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.structured_output import StructuredOutput

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engines():
    graph, eager = cuda_graph_and_eager()
    graph.capture_structured_graphs()  # not at the first structured step (test_structured_async_gpu.py)
    return graph, eager


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_cuda_structured_graph_equals_eager_and_validates(engines, temperature):
    graph, eager = engines
    structured = StructuredOutput.json_schema(SCHEMA)
    params = [
        SamplingParams(temperature=temperature, seed=s, max_tokens=100, structured_output=structured)
        for s in range(len(PROMPTS))
    ]
    got, want = run_all(graph, PROMPTS, params), run_all(eager, PROMPTS, params)
    assert graph.decode_graphs.runners["structured"].stats.num_replayed > 0
    assert got == want
    for tokens, reason in got:
        text = graph.tokenizer.decode(tokens)
        assert reason == "stop" and valid(json.loads(text)), text


def test_cuda_free_requests_beside_grammar_ones_keep_their_tokens(engines):
    graph, _ = engines
    free = SamplingParams(temperature=0.8, seed=7, max_tokens=24, ignore_eos=True)
    alone = run_all(graph, PROMPTS[:2], free)
    structured = SamplingParams(
        seed=2, max_tokens=100, structured_output=StructuredOutput.json_schema(SCHEMA)
    )
    mixed = run_all(graph, PROMPTS, [free, free, structured, structured])
    assert mixed[:2] == alone
