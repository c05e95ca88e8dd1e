"""The structured decode kinds (structured, mask-greedy, mask-sampling) are captured on first use: an engine
that never sees a grammar never builds them, the first step with a grammar sequence queues them on a
background pass (structured_graphs.py), its steps run them eager until their rungs land and replay them
after, and the tokens are the same throughout."""

import logging

import pytest
from test_structured_async import requests, run, tokens_and_reasons

from graphrun.graphs.status import CallFallback
from graphrun.llm import background_graphs
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.structured_output import StructuredOutput

STRUCTURED = ("structured", "mask-greedy", "mask-sampling")
LADDER = (1, 2, 4)
FREE = [
    SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True),
    SamplingParams(temperature=0.8, seed=3, max_tokens=5, ignore_eos=True),
    SamplingParams(temperature=0.8, seed=4, max_tokens=5, logprobs=1, ignore_eos=True),
]


def engine(**kw):
    settings = {
        "model": "tiny", "max_num_seqs": 4, "max_model_len": 160, "max_num_batched_tokens": 64,
        "cuda_graph_sizes": LADDER, "cuda_graph_mode": "full", "cuda_graph_max_prefill_tokens": 0,
        "mixed_prefill_tokens": 2,
    }  # fmt: skip
    return LLMEngine(EngineConfig(**{**settings, **kw}))


def captured_total(eng, kind):
    return eng.registry.get_sample_value("graphrun_cuda_graph_captured_total", {"runner": f"decode-{kind}"})


def drive(eng, params, prompt="p"):
    """One request to its end; its outputs."""
    seq_id = eng.add_request(prompt, params)
    out = []
    while eng.has_unfinished():
        out += [o for o in eng.step() if o.seq_id == seq_id]
    return out


def test_an_engine_without_structured_requests_never_builds_the_structured_kinds():
    eng = engine(graph_backend="sim")
    for i, params in enumerate(FREE):
        drive(eng, params, f"free {i}")
    assert set(eng.decode_graphs.runners) == {"sampling", "greedy", "logprobs"}
    assert eng.graph_progress() == f"captured {3 * len(LADDER)}/{3 * len(LADDER)}" and not eng.capture_pending
    assert [r.runner for r in eng.status().runners] == ["decode-sampling", "decode-greedy", "decode-logprobs"]
    for kind in STRUCTURED:  # their series exist for dashboards, at zero
        assert captured_total(eng, kind) == 0


def test_the_first_structured_step_queues_their_capture_and_later_steps_replay_them(monkeypatch, caplog):
    # no rung under load here: only the idle loop's capture_step() (the pacing has its own test below)
    monkeypatch.setattr(background_graphs.BackgroundGraphs, "step_if_due", lambda self: False)
    eng = engine(graph_backend="sim")
    drive(eng, FREE[0])
    assert "structured" not in eng.decode_graphs.runners
    params = SamplingParams(
        temperature=0.0, max_tokens=12, structured_output=StructuredOutput.regex("[a-z]{20}")
    )
    eng.add_request("first", params)
    with caplog.at_level(logging.INFO, logger="graphrun.llm.engine"):
        eng.step()  # its prefill: the kinds are built, uncaptured, and queued
    assert "first structured step: 3 kinds x 3 sizes" in caplog.text
    runners = eng.decode_graphs.runners
    assert set(STRUCTURED) <= set(runners) and eng.capture_pending
    assert eng.graph_progress() == f"capturing {3 * len(LADDER)}/{6 * len(LADDER)}"
    assert all(captured_total(eng, kind) == 0 for kind in STRUCTURED)
    eng.step()  # a decode step before any of their rungs: the overlapped path, its halves eager
    assert runners["structured"].stats.eager_fallback.get(CallFallback.CAPTURING, 0) == 1
    assert runners["mask-greedy"].stats.num_replayed == 0
    while eng.capture_step():  # what a serving loop does while idle
        pass
    assert eng.graph_progress() == f"captured {6 * len(LADDER)}/{6 * len(LADDER)}"
    assert all(captured_total(eng, kind) == len(LADDER) for kind in STRUCTURED)
    while eng.has_unfinished():
        eng.step()
    assert runners["structured"].stats.num_replayed >= 9 and runners["mask-greedy"].stats.num_replayed >= 9
    assert runners["structured"].stats.eager_fallback.get(CallFallback.CAPTURING, 0) == 1  # no more
    built = {kind: runners[kind] for kind in STRUCTURED}
    drive(eng, params, "second")  # built once
    assert all(eng.decode_graphs.runners[kind] is runner for kind, runner in built.items())


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_structured_tokens_stay_those_of_eager_while_their_rungs_land(monkeypatch, temperature):
    """A rung after every step (the pass's share raised to all of it), so steps meet the switch."""
    monkeypatch.setattr(background_graphs, "BUSY_CAPTURE_SHARE", 1.0)
    lazy, eager = engine(graph_backend="sim"), engine(enforce_eager=True)
    reqs = requests(temperature)
    got = tokens_and_reasons(run(lazy, reqs))
    assert got == tokens_and_reasons(run(eager, reqs))
    runners = lazy.decode_graphs.runners
    assert not lazy.capture_pending  # every rung landed during the run
    kind = "mask-greedy" if temperature == 0 else "mask-sampling"
    assert runners[kind].stats.eager_fallback.get(CallFallback.CAPTURING, 0) > 0  # before its rungs
    assert runners[kind].stats.num_replayed > 0  # and after
    lazy.async_scheduling = False  # every rung captured: the synchronous path, on the graphs
    assert tokens_and_reasons(run(lazy, reqs)) == got


def test_a_first_structured_step_during_the_start_up_pass_joins_it(caplog):
    eng = engine(graph_backend="sim", capture="background", cuda_graph_max_prefill_tokens=64)
    pass_ = eng._background
    manager = eng.scheduler.block_manager
    assert manager.num_used_blocks > 1  # held for the prefill capture
    params = SamplingParams(max_tokens=8, structured_output=StructuredOutput.choice(["yes", "no"]))
    seq_id = eng.add_request("q", params)
    eng.step()
    assert eng._background is pass_ and set(STRUCTURED) <= set(eng.decode_graphs.runners)
    start_up = [r for kind, r in eng.decode_graphs.runners.items() if kind not in STRUCTURED]
    start_up.append(eng.prefill_graphs.runner)
    with caplog.at_level(logging.INFO, logger="graphrun.llm.engine"):
        while any(r.pending_rungs for r in start_up):
            eng.capture_step()
    assert "reserved KV blocks released" in caplog.text and "background capture done" not in caplog.text
    assert manager.num_used_blocks == len(eng.scheduler._unfinished[seq_id].block_ids)  # the request's
    assert eng.capture_pending  # the structured kinds come after
    while eng.capture_step():
        pass
    total = 6 * len(LADDER) + len(eng.prefill_capture_sizes())
    assert eng.graph_progress() == f"captured {total}/{total}"
    while eng.has_unfinished():
        eng.step()


def test_capture_structured_graphs_captures_them_now_and_says_so(caplog):
    eng = engine(graph_backend="sim")
    with caplog.at_level(logging.INFO, logger="graphrun.llm.decode_graph"):
        eng.capture_structured_graphs()
    assert (
        "the structured kinds (structured, mask-greedy, mask-sampling): 9 of 9 rungs captured in"
        in caplog.text
    )
    assert not eng.capture_pending and all(captured_total(eng, kind) == len(LADDER) for kind in STRUCTURED)
    engine(enforce_eager=True).capture_structured_graphs()  # no decode graphs: nothing to do
