"""Structured output with asynchronous scheduling: a step with grammar rows launches its forward before it
waits for the previous step's tokens, samples after, and every token equals synchronous scheduling's.

Three engines of the tiny preset cover the three ways a structured step runs: decode graphs in FULL mode
(simulator; mixed steps through the decode graph too), eager, and FULL_AND_PIECEWISE with mixed steps
through the piecewise graphs (a grammar's prefill there too). Each runs a mix of grammar requests (JSON
schema, regex, choice; one asking for logprobs; one cut by max_tokens mid-grammar) and free ones,
arriving while others decode, both ways: asynchronous and synchronous (the same engine switched).
"""

import json
import math
import re
from collections.abc import Callable
from typing import ClassVar

import pytest
import torch
from test_structured_output import SCHEMA, valid

from graphrun.graphs.status import CallFallback
from graphrun.llm.decode_graph import DecodeShape, random_inputs
from graphrun.llm.decode_step import MASK_LOGPROBS
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.grammar import GrammarMatcher
from graphrun.llm.logprobs import compute_logprobs
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.structured_output import StructuredOutput
from graphrun.llm.token_masks import ALL_ALLOWED

REGEX = r"[a-z]{2,5}-[0-9]{3}"
CHOICES = ["red", "green", "blue"]


def engine(**kw):
    settings = {
        "model": "tiny", "max_num_seqs": 4, "max_model_len": 160, "max_num_batched_tokens": 64,
        "cuda_graph_sizes": (1, 2, 4), "cuda_graph_max_prefill_tokens": 32,
    }  # fmt: skip
    return LLMEngine(EngineConfig(**{**settings, **kw}))


@pytest.fixture(scope="module")
def engines():
    built = {
        "graph": engine(graph_backend="sim", cuda_graph_mode="full", mixed_prefill_tokens=2),
        "eager": engine(enforce_eager=True, mixed_prefill_tokens=2),
        "piecewise": engine(
            graph_backend="sim", cuda_graph_mode="full_and_piecewise", mixed_prefill_tokens=8
        ),
    }
    for eng in built.values():  # captured now, not at the first structured step: test_structured_lazy.py
        eng.capture_structured_graphs()
    return built


def requests(temperature):
    """(prompt, params): grammar and free requests mixed, some ending mid-batch (length, EOS, grammar)."""
    schema, regex = StructuredOutput.json_schema(SCHEMA), StructuredOutput.regex(REGEX)
    choice = StructuredOutput.choice(CHOICES)

    def p(seed, max_tokens, structured=None, **kw):
        return SamplingParams(
            temperature=temperature, seed=seed, max_tokens=max_tokens, structured_output=structured, **kw
        )

    return [
        ("give me json", p(1, 90, schema)),
        ("free text", p(2, 20, ignore_eos=True)),
        ("a code", p(3, 30, regex)),
        ("cut short", p(4, 7, schema)),  # max_tokens ends it mid-grammar
        ("a colour", p(5, 10, choice)),
        ("more free text", p(6, 12)),
        ("json and logprobs", p(7, 90, schema, logprobs=2)),
    ]


def run(eng, reqs, every=2, abort=None):
    """Add a request every `every` steps; abort=(index, k): abort request `index` once k of its tokens
    are out. Each request's (tokens, finish reason, logprobs of each token)."""
    pending = list(reqs)
    ids, out = [], {}
    steps = 0
    while pending or eng.has_unfinished():
        if pending and steps % every == 0:
            prompt, params = pending.pop(0)
            ids.append(eng.add_request(prompt, params))
            out[ids[-1]] = ([], None, [])
        for o in eng.step():
            tokens, _, logprobs = out[o.seq_id]
            out[o.seq_id] = ([*tokens, o.new_token_id], o.finish_reason, [*logprobs, o.logprobs])
        steps += 1
        if abort is not None and len(ids) > abort[0] and len(out[ids[abort[0]]][0]) == abort[1]:
            eng.abort(ids[abort[0]])
            abort = None
    return [out[i] for i in ids]


def both_ways(eng, reqs, **kw):
    """run() asynchronous, then synchronous, on the same engine."""
    assert eng.async_scheduling
    fast = run(eng, reqs, **kw)
    eng.async_scheduling = False
    try:
        return fast, run(eng, reqs, **kw)
    finally:
        eng.async_scheduling = True


def tokens_and_reasons(results):
    """run()'s results without the logprobs (floats: compared within a tolerance where it matters)."""
    return [(tokens, reason) for tokens, reason, _ in results]


def check_constraints(eng, reqs, results):
    """Every grammar request's text follows its grammar (whole, when the grammar ended it)."""
    for (_, params), (tokens, reason, _) in zip(reqs, results, strict=True):
        structured, text = params.structured_output, eng.tokenizer.decode(tokens)
        if structured is None or reason != "stop":
            continue
        if structured.kind == "json":
            assert valid(json.loads(text)), text
        elif structured.kind == "regex":
            assert re.fullmatch(REGEX, text), text
        else:
            assert text in CHOICES, text


@pytest.mark.parametrize("temperature", [0.0, 0.9])  # greedy, seeded sampling
@pytest.mark.parametrize("which", ["graph", "eager", "piecewise"])
def test_async_structured_tokens_equal_sync(engines, which, temperature):
    eng = engines[which]
    reqs = requests(temperature)
    fast, plain = both_ways(eng, reqs)
    assert tokens_and_reasons(fast) == tokens_and_reasons(plain)
    for (tokens, _, got), (_, _, want) in zip(fast, plain, strict=True):
        assert len(got) == len(tokens)
        for a, b in zip(got, want, strict=True):  # the logprobs request's, eager in both
            assert (a is None) == (b is None)
            if a is not None:
                assert a.top_ids == b.top_ids
                assert math.isclose(a.logprob, b.logprob, rel_tol=1e-5, abs_tol=1e-5)
    reasons = {reason for _, reason, _ in fast}
    assert {"stop", "length"} <= reasons  # requests ended mid-batch both ways
    assert all(lp is not None for lp in fast[-1][2]) and fast[0][2][0] is None  # asked for, or not
    check_constraints(eng, reqs, fast)


def test_the_three_paths_give_the_same_structured_tokens(engines):
    reqs = requests(0.9)
    got = {name: tokens_and_reasons(run(eng, reqs)) for name, eng in engines.items()}
    assert got["graph"] == got["eager"] == got["piecewise"]


@pytest.mark.parametrize("which", ["graph", "eager"])
def test_aborting_a_grammar_request_with_a_step_in_flight_keeps_the_others_exact(engines, which):
    eng = engines[which]
    reqs = requests(0.0)
    fast, plain = (tokens_and_reasons(r) for r in both_ways(eng, reqs, abort=(0, 5)))
    assert fast == plain
    assert fast[0] == (fast[0][0], None) and len(fast[0][0]) == 5  # no token, no finish after the abort
    alone = tokens_and_reasons(run(eng, reqs))
    assert fast[1:] == alone[1:]
    assert eng.scheduler.block_manager.num_used_blocks == 0


class Calls:
    """Records, per step, the batch's kind and the order of the engine's forward launches, waits for
    tokens and samplings (spies on its methods, removed by close())."""

    SPIED: ClassVar[dict[str, Callable[[tuple], str]]] = {
        "_decode_kind": lambda args: f"forward:{args[1]}",
        "_forward": lambda args: "forward:piecewise" if args[3] else "forward:eager",
        "_masked_sample": lambda args: "sample",
        "_sample_eager": lambda args: "sample",
        "_resolve": lambda args: "resolve",
    }

    def __init__(self, eng: LLMEngine) -> None:
        self.eng = eng
        self.steps: list[list[str]] = []
        self.kinds: list[str | None] = []
        for name, label in self.SPIED.items():
            self._wrap(name, label)
        schedule = eng.scheduler.schedule

        def spy():
            batch = schedule()
            self.kinds.append(batch.kind if batch is not None else None)
            return batch

        eng.scheduler.schedule = spy

    def _wrap(self, name, label):
        method = getattr(self.eng, name)

        def spy(*args):
            self.steps[-1].append(label(args))
            return method(*args)

        setattr(self.eng, name, spy)

    def step(self):
        self.steps.append([])
        self.eng.step(on_launched=lambda: self.steps[-1].append("on_launched"))
        timing = self.eng.last_step_timing
        assert timing.start <= timing.launched <= timing.waited <= timing.end

    def run(self, reqs):
        for prompt, params in reqs:
            self.eng.add_request(prompt, params)
        while self.eng.has_unfinished():
            self.step()

    def close(self):
        for name in self.SPIED:
            delattr(self.eng, name)
        del self.eng.scheduler.schedule


@pytest.mark.parametrize("which", ["graph", "eager"])
def test_a_structured_decode_step_launches_its_forward_before_it_waits_for_the_previous_tokens(
    engines, which
):
    eng = engines[which]
    schema = StructuredOutput.json_schema(SCHEMA)
    structured = SamplingParams(temperature=0.0, max_tokens=40, structured_output=schema)
    free = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    runners = eng.decode_graphs.runners if eng.decode_graphs is not None else {}
    before = {k: r.stats.num_replayed for k, r in runners.items()}
    calls = Calls(eng)
    try:
        calls.run([("json please", structured), ("free", free)])
    finally:
        calls.close()
    decode = [s for s, kind in zip(calls.steps, calls.kinds, strict=True) if kind == "decode"]
    # every decode step whose previous one owes its grammar row a token: forward, wait, sample
    overlapped = [s for s in decode if s == ["forward:structured", "on_launched", "resolve", "sample"]]
    assert len(overlapped) >= 10 and len(overlapped) >= len(decode) - 1, calls.steps
    if runners:  # the graphs ran it: the forward kind, then a mask kind
        assert runners["structured"].stats.num_replayed - before["structured"] >= len(overlapped)
        assert runners["mask-greedy"].stats.num_replayed - before["mask-greedy"] >= len(overlapped)


def test_free_steps_keep_one_launch_then_the_wait(engines):
    eng = engines["graph"]
    calls = Calls(eng)
    try:
        calls.run([("free", SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))])
    finally:
        calls.close()
    decode = [s for s, kind in zip(calls.steps, calls.kinds, strict=True) if kind == "decode"]
    assert len(decode) >= 4 and all(s == ["forward:greedy", "on_launched", "resolve"] for s in decode)


def test_a_piecewise_mixed_step_with_grammar_rows_samples_after_the_wait(engines):
    eng = engines["piecewise"]
    structured = SamplingParams(max_tokens=30, structured_output=StructuredOutput.regex(REGEX))
    calls = Calls(eng)
    try:
        eng.add_request("first", structured)
        calls.step()  # its prefill
        calls.step()  # its first decode
        calls.run([("a longer second prompt that rides along", structured)])
    finally:
        calls.close()
    mixed = [s for s, kind in zip(calls.steps, calls.kinds, strict=True) if kind == "mixed"]
    assert mixed and all(s == ["forward:piecewise", "on_launched", "resolve", "sample"] for s in mixed), (
        calls.steps
    )


def test_structured_steps_compute_no_logprobs_unless_asked(engines):
    eng = engines["graph"]
    buffers = eng.logprob_buffers
    buffers.values.fill_(float("nan"))
    structured = SamplingParams(max_tokens=30, structured_output=StructuredOutput.json_schema(SCHEMA))
    run(eng, [("json", structured), ("json too", structured)])
    assert torch.isnan(buffers.values).all()  # no step wrote a logprob
    fallbacks = eng.decode_graphs.runners["mask-sampling"].stats.eager_fallback
    before = fallbacks.get(CallFallback.NEEDS_OTHER_OUTPUT, 0)
    asks = SamplingParams(max_tokens=30, logprobs=1, structured_output=structured.structured_output)
    (result,) = run(eng, [("json", asks)])
    assert all(lp is not None and lp.logprob <= 0 for lp in result[2])
    assert fallbacks.get(CallFallback.NEEDS_OTHER_OUTPUT, 0) > before  # counted, not silent


def test_a_matcher_fills_one_mask_per_token_it_returns(engines, monkeypatch):
    """A request whose grammar ended at step n still has its row in step n+1 (scheduled before the end was
    known): that row is dropped, and its matcher is not asked for a mask."""
    fills: dict[int, int] = {}
    fill = GrammarMatcher.fill

    def counting(self, row):
        fills[id(self)] = fills.get(id(self), 0) + 1
        return fill(self, row)

    monkeypatch.setattr(GrammarMatcher, "fill", counting)
    eng = engines["graph"]
    choice = StructuredOutput.choice(CHOICES)
    params = [
        SamplingParams(seed=s, temperature=0.9, max_tokens=10, structured_output=choice) for s in range(3)
    ]
    ids = [eng.add_request(f"colour {i}", p) for i, p in enumerate(params)]
    seqs = {i: eng.scheduler._unfinished[i] for i in ids}
    out = {i: 0 for i in ids}
    while eng.has_unfinished():
        for o in eng.step():
            out[o.seq_id] += 1
    assert all(fills[id(seqs[i].grammar)] == out[i] for i in ids), (fills, out)


def test_async_scheduling_can_be_switched_once_the_step_in_flight_owes_nothing(engines):
    eng = engines["eager"]
    eng.add_request("stop", SamplingParams(max_tokens=3, structured_output=StructuredOutput.choice(["ab"])))
    while eng.has_unfinished():
        eng.step()
    assert eng._launched is not None  # the extra step of a request that stopped on its grammar's end
    eng.async_scheduling = False
    assert eng._launched is None and not eng.async_scheduling
    eng.async_scheduling = True
    eng.add_request("busy", SamplingParams(max_tokens=5, ignore_eos=True))
    eng.step()
    eng.step()
    with pytest.raises(RuntimeError, match="in flight"):
        eng.async_scheduling = False
    while eng.has_unfinished():
        eng.step()


@pytest.mark.parametrize("which", ["graph", "eager"])
@torch.inference_mode()  # as engine.step() runs them
def test_the_two_halves_sample_what_one_graph_samples(engines, which):
    """StructuredForward then MaskedSample, masks all allowed, give the plain kinds' tokens (graphs: the
    replays of both halves); a mask row restricts its row only; mask-logprobs writes the raw logprobs."""
    eng = engines[which]
    cfg = eng.config
    shape = DecodeShape(
        cfg.max_num_seqs, eng.max_blocks_per_seq, eng.max_model_len, eng.num_blocks, cfg.block_size,
        eng.model_config.vocab_size,
    )  # fmt: skip
    step = random_inputs(shape, 3, torch.Generator().manual_seed(1), eng.device)
    graphs = eng.decode_graphs

    def forward(kind):
        return graphs.run(step, kind) if graphs else eng._eager_decode[kind](*step.packed())

    def masked(hidden, kind):
        return (
            graphs.sample(hidden, step, kind) if graphs else eng._eager_decode[kind](hidden, *step.packed())
        )

    masks = eng.token_masks.device_masks
    masks.fill_(ALL_ALLOWED)
    for plain, kind in (("greedy", "mask-greedy"), ("sampling", "mask-sampling")):
        want = forward(plain).clone()
        got = masked(forward("structured"), kind)
        assert torch.equal(got, want), (kind, got, want)
    free = forward("greedy").clone()
    assert int(free[1]) not in (5, 9)  # so the mask below changes row 1
    masks[1].zero_()
    masks[1, 0] = (1 << 5) | (1 << 9)  # row 1: tokens 5 and 9 only
    got = masked(forward("structured"), "mask-greedy")
    assert int(got[1]) in (5, 9) and got[0] == free[0] and got[2] == free[2]
    masks.fill_(ALL_ALLOWED)
    hidden = forward("structured")
    tokens = eng._eager_decode[MASK_LOGPROBS](hidden, *step.packed())
    logits = eng.model.compute_logits(hidden)
    values, ids = eng.logprob_buffers.prefix(3)
    want_values, want_ids = compute_logprobs(logits, tokens, eng.logprob_buffers.k)
    assert torch.equal(ids, want_ids) and torch.allclose(values, want_values)


def test_a_masked_sampling_that_raises_leaves_nothing_in_flight(engines):
    """The previous step is resolved by then: the batch is discarded, and the engine steps on (the server
    fails the requests of a step that raised; here they simply run again to their end)."""
    eng = engines["eager"]
    structured = SamplingParams(max_tokens=20, structured_output=StructuredOutput.regex(REGEX))
    ids = [eng.add_request(f"fail {i}", structured) for i in range(2)]
    for _ in range(4):
        eng.step()
    masked = eng._masked_sample

    def broken(*args):
        raise RuntimeError("injected")

    eng._masked_sample = broken
    try:
        with pytest.raises(RuntimeError, match="injected"):
            eng.step()
    finally:
        del eng._masked_sample
    assert eng._masked_sample == masked and eng._launched is None
    finished = set()
    while eng.has_unfinished():
        finished |= {o.seq_id for o in eng.step() if o.finished}
    assert finished == set(ids) and eng.scheduler.block_manager.num_used_blocks == 0
