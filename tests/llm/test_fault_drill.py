"""EngineConfig(replay_fault_rate=...): a fault drill. Once every graph is captured, that fraction of
graph replays raises before running; each such call runs eager, is counted as a replay_error fallback,
and the tokens are those of the same engine without faults."""

import pytest
import torch
from engine_runs import run_all

from graphrun.errors import ConfigError
from graphrun.graphs.backends.faulty import FaultyBackend, InjectedReplayFault, ReplayFaults
from graphrun.graphs.backends.sim import SimBackend
from graphrun.graphs.status import CallFallback
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
PROMPTS = [f"request {i} asks about item {i * 7}" for i in range(6)]


def engine(rate: float, **kw) -> LLMEngine:
    settings = {
        "model": "tiny", "graph_backend": "sim", "max_num_seqs": 8, "max_model_len": 96,
        "cuda_graph_sizes": (1, 4, 8), "cuda_graph_max_prefill_tokens": 32,  # few rungs: a quick capture
    }  # fmt: skip
    return LLMEngine(EngineConfig(**settings, replay_fault_rate=rate, mixed_prefill_tokens=8, **kw))


def replay_errors(eng: LLMEngine) -> int:
    return sum(s.eager_fallback.get(CallFallback.REPLAY_ERROR, 0) for s in (r.stats for r in eng._runners()))


def test_failed_replays_run_eager_counted_and_the_tokens_do_not_change():
    clean, drilled = engine(0.0), engine(0.3)
    assert run_all(drilled, PROMPTS, GREEDY) == run_all(clean, PROMPTS, GREEDY)
    faults = drilled._faults
    assert faults is not None and faults.armed and faults.num_injected > 0
    assert replay_errors(drilled) == faults.num_injected  # every injected failure ran eager, counted
    assert replay_errors(clean) == 0 and clean._faults is None
    assert sum(r.stats.num_replayed for r in drilled._runners()) > 0  # the rest still replayed


def test_every_replay_failing_still_answers_and_capture_was_not_hurt():
    drilled = engine(1.0)
    statuses = [s for r in drilled._runners() for s in r.status()]
    assert statuses and all(s.captured for s in statuses)  # not armed during capture and verification
    assert run_all(drilled, PROMPTS[:3], GREEDY) == run_all(engine(0.0), PROMPTS[:3], GREEDY)
    assert sum(r.stats.num_replayed for r in drilled._runners()) == 0
    assert replay_errors(drilled) == drilled._faults.num_injected > 0


def test_the_rate_is_checked():
    with pytest.raises(ConfigError, match="replay_fault_rate"):
        EngineConfig(replay_fault_rate=1.5)
    with pytest.raises(ConfigError, match="replay fault rate"):
        ReplayFaults(-0.1)


def test_the_backend_fails_only_when_armed_at_about_its_rate():
    backend = FaultyBackend(SimBackend(), ReplayFaults(0.25, seed=3))
    counter = torch.zeros(1)
    graph = backend.capture(lambda: counter.add_(1))
    start = counter.item()
    graph.replay()  # not armed: never fails
    backend.armed = True
    failures = 0
    for _ in range(2000):
        try:
            graph.replay()
        except InjectedReplayFault:
            failures += 1
    assert failures == backend.num_injected and 400 < failures < 600
    assert counter.item() == start + 1 + 2000 - failures  # a failed replay ran nothing
