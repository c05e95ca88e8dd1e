"""Structured output in the engine: a random-weight model's output always matches its grammar, graph (sim)
and eager, and requests without a grammar are untouched by those that have one."""

import json
import pickle
import re

import pytest
import torch

from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams, SamplingParamsError
from graphrun.llm.structured_output import StructuredOutput
from graphrun.llm.token_masks import apply_token_masks, num_words

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "pet", "tags"],
    "additionalProperties": False,
}
PROMPTS = ["give me json", "a person, please", "x", "structured"]


def valid(value: object) -> bool:
    """SCHEMA's rules, checked by hand."""
    if not isinstance(value, dict) or list(value) != ["name", "age", "pet", "tags"]:  # in schema order
        return False
    name, age, tags = value["name"], value["age"], value["tags"]
    return (
        isinstance(name, str)
        and len(name) <= 6
        and type(age) is int
        and 0 <= age <= 120
        and value["pet"] in ("cat", "dog")
        and isinstance(tags, list)
        and len(tags) <= 3
        and all(type(t) is bool for t in tags)
    )


def engine(**kw):
    kw.setdefault("max_num_seqs", 4)
    kw.setdefault("max_model_len", 128)
    return LLMEngine(EngineConfig(model="tiny", **kw))


@pytest.fixture(scope="module")
def engines():
    # full mode: no piecewise capture to wait for; a grammar's prefill runs eager (its first token masked)
    graph = engine(
        graph_backend="sim", cuda_graph_sizes=(1, 2, 4), cuda_graph_mode="full", max_num_batched_tokens=64
    )
    graph.capture_structured_graphs()  # not at the first structured step: test_structured_lazy.py
    return graph, engine(enforce_eager=True)


def run_all(eng, prompts, params):
    """Each request's (token ids, finish reason), in order; params is one for all or one per prompt."""
    ids = [
        eng.add_request(p, params[i] if isinstance(params, list) else params) for i, p in enumerate(prompts)
    ]
    out: dict[int, list[int]] = {i: [] for i in ids}
    reasons: dict[int, str | None] = {}
    while eng.has_unfinished():
        for o in eng.step():
            out[o.seq_id].append(o.new_token_id)
            if o.finished:
                reasons[o.seq_id] = o.finish_reason
    return [(out[i], reasons[i]) for i in ids]


def texts(eng, results):
    return [eng.tokenizer.decode(tokens) for tokens, _ in results]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("which", [0, 1])  # graph (sim), eager
def test_json_schema_output_always_parses_and_validates(engines, temperature, which):
    eng = engines[which]
    structured = StructuredOutput.json_schema(SCHEMA)
    params = [
        SamplingParams(temperature=temperature, seed=seed, max_tokens=100, structured_output=structured)
        for seed in range(len(PROMPTS))
    ]
    results = run_all(eng, PROMPTS, params)
    for text, (_, reason) in zip(texts(eng, results), results, strict=True):
        assert reason == "stop", text  # the grammar's end ends the request
        assert valid(json.loads(text)), text


def test_graph_and_eager_give_the_same_structured_tokens(engines):
    params = SamplingParams(seed=3, max_tokens=100, structured_output=StructuredOutput.json_schema(SCHEMA))
    graph, eager = (run_all(eng, PROMPTS, params) for eng in engines)
    assert graph == eager


def test_a_complete_grammar_stops_the_request_even_with_ignore_eos(engines):
    structured = StructuredOutput.choice(["yes", "no"])
    params = SamplingParams(seed=1, max_tokens=50, ignore_eos=True, structured_output=structured)
    for eng in engines:
        results = run_all(eng, PROMPTS, params)
        assert all(reason == "stop" and 2 <= len(tokens) <= 3 for tokens, reason in results)


def test_guided_choice_returns_one_of_the_choices(engines):
    choices = ["red", "green", "blue", "ultraviolet"]
    structured = StructuredOutput.choice(choices)
    params = [SamplingParams(seed=s, max_tokens=20, structured_output=structured) for s in range(8)]
    for eng in engines:
        got = texts(eng, run_all(eng, PROMPTS * 2, params))
        assert set(got) <= set(choices)
        assert len(set(got)) > 1  # the sampler still chooses among them


def test_guided_regex_output_matches_the_pattern(engines):
    pattern = r"[a-z]{2,5}-[0-9]{3}( [A-Z]{1,4})?"  # bounded: the grammar itself ends
    structured = StructuredOutput.regex(pattern)
    params = [SamplingParams(seed=s, max_tokens=30, structured_output=structured) for s in range(4)]
    for eng in engines:
        results = run_all(eng, PROMPTS, params)
        for text, (_, reason) in zip(texts(eng, results), results, strict=True):
            assert re.fullmatch(pattern, text), text
            assert reason == "stop"


def test_json_object_output_parses_as_an_object():
    # a random walk through any JSON can run long: these (prompt, seed) pairs end within a few hundred
    # tokens here (an object of 25 and one of 269 tokens, and "{}"); any that ends must parse
    eng = engine(enforce_eager=True, max_model_len=512)
    structured = StructuredOutput.json_object()
    pairs = [("x", 2), ("x", 6), ("a person, please", 1)]
    params = [SamplingParams(seed=seed, max_tokens=400, structured_output=structured) for _, seed in pairs]
    results = run_all(eng, [prompt for prompt, _ in pairs], params)
    stopped = [
        text for text, (_, reason) in zip(texts(eng, results), results, strict=True) if reason == "stop"
    ]
    assert stopped
    for text in stopped:
        assert isinstance(json.loads(text), dict), text


@pytest.mark.parametrize(("which", "temperature"), [(0, 0.8), (1, 0.0)])  # graph sampling, eager greedy
def test_free_requests_beside_grammar_requests_get_the_tokens_they_get_alone(engines, which, temperature):
    eng = engines[which]
    free = SamplingParams(temperature=temperature, seed=7, max_tokens=24, ignore_eos=True)
    alone = run_all(eng, PROMPTS[:2], free)
    structured = SamplingParams(
        seed=2, max_tokens=100, structured_output=StructuredOutput.json_schema(SCHEMA)
    )
    mixed = run_all(eng, PROMPTS, [free, free, structured, structured])
    assert mixed[:2] == alone
    assert all(valid(json.loads(text)) for text in texts(eng, mixed[2:]))


def test_only_steps_with_a_grammar_row_replay_the_structured_graph(engines):
    graph, _ = engines
    runners = graph.decode_graphs.runners
    before = runners["structured"].stats.num_replayed
    run_all(graph, PROMPTS, SamplingParams(temperature=0.5, max_tokens=8, ignore_eos=True))
    assert runners["structured"].stats.num_replayed == before
    structured = SamplingParams(max_tokens=40, structured_output=StructuredOutput.json_schema(SCHEMA))
    run_all(graph, PROMPTS[:1], structured)
    assert runners["structured"].stats.num_replayed > before


def test_choices_of_one_prompt_each_follow_the_grammar(engines):
    structured = StructuredOutput.json_schema(SCHEMA)
    params = SamplingParams(seed=11, max_tokens=100, structured_output=structured)
    for eng in engines:
        ids = eng.add_choices("n choices", params, 3)
        out: dict[int, list[int]] = {i: [] for i in ids}
        while eng.has_unfinished():
            for o in eng.step():
                out[o.seq_id].append(o.new_token_id)
        got = [eng.tokenizer.decode(out[i]) for i in ids]
        assert all(valid(json.loads(text)) for text in got)
        assert len(set(got)) > 1


def test_synchronous_scheduling_gives_the_same_structured_tokens(engines):
    eng = engines[1]
    params = SamplingParams(seed=5, max_tokens=100, structured_output=StructuredOutput.json_schema(SCHEMA))
    asynchronous = run_all(eng, PROMPTS[:2], params)
    eng.async_scheduling = False
    try:
        synchronous = run_all(eng, PROMPTS[:2], params)
    finally:
        eng.async_scheduling = True
    assert asynchronous == synchronous


@pytest.mark.parametrize(
    "structured",
    [
        StructuredOutput.json_schema({"type": "no-such-type"}),
        StructuredOutput.regex("a(b"),
        StructuredOutput.choice([]),
        StructuredOutput.grammar("start: undefined_rule"),
    ],
)
def test_a_constraint_that_does_not_compile_is_rejected_naming_it(engines, structured):
    eng = engines[1]
    with pytest.raises(SamplingParamsError) as info:
        eng.add_request("x", SamplingParams(structured_output=structured))
    assert info.value.param == "structured_output"
    assert not eng.has_unfinished()


def test_masks_forbid_exactly_the_cleared_bits():
    vocab = 70
    masks = torch.full((2, num_words(vocab)), -1, dtype=torch.int32)
    masks[0, 0] = 0b1010  # row 0: tokens 1 and 3 of the first word, nothing of the others
    masks[0, 1:] = 0
    masks[1, 2] = 0  # row 1: every token but 64..69
    logits = torch.zeros(2, vocab)
    out = apply_token_masks(logits, masks)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [1, 3]
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == list(range(64))


def test_a_constraint_crosses_the_engine_process_pipe_intact():
    params = SamplingParams(structured_output=StructuredOutput.json_schema(SCHEMA))
    again = pickle.loads(pickle.dumps(params))
    assert again == params and json.loads(again.structured_output.spec) == SCHEMA
    assert list(json.loads(again.structured_output.spec)["properties"]) == ["name", "age", "pet", "tags"]
