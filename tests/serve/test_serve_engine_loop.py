"""The engine loop alone (no server): when a step's tokens leave for the streams, held or at once."""

from __future__ import annotations

import queue
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams
from graphrun.serve.engine_loop import Command, EngineLoop
from graphrun.serve.metrics import EngineMetrics
from graphrun.serve.request import EngineRequest, Event, Unavailable


class _Recorder:
    """An outbox that writes what it is sent into a shared timeline."""

    def __init__(self, timeline: list[Any], inbox: queue.SimpleQueue[Command], requests: int) -> None:
        self.timeline, self.inbox, self.left = timeline, inbox, requests

    def admitted(self, request: EngineRequest, result: int | Exception) -> None:
        assert not isinstance(result, Exception), result

    def events(self, batch: list[tuple[EngineRequest, Event]], trace_index: int | None) -> None:
        self.timeline.append(("events", len(batch)))
        self.left -= sum(1 for _, event in batch if isinstance(event, tuple) and event[1] is not None)
        if self.left == 0:
            self.inbox.put(("stop", None))


@pytest.mark.parametrize("hold", [True, False])
def test_events_leave_after_the_next_launch_when_held_and_as_soon_as_resolved_otherwise(hold):
    engine = LLMEngine(EngineConfig(model="tiny", max_num_seqs=4, max_model_len=96))
    timeline: list[Any] = []
    step = engine.step

    def traced_step(on_launched: Any = None) -> Any:
        timeline.append("start")
        out = step(on_launched=on_launched)
        timeline.append("end")
        return out

    engine.step = traced_step  # type: ignore[method-assign]
    inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    for key in range(3):
        inbox.put(("submit", EngineRequest(key, [5, 6, 7, key + 8], params, time.monotonic())))
    metrics = EngineMetrics(CollectorRegistry())
    assert EngineLoop(engine, inbox, _Recorder(timeline, inbox, 3), metrics, hold=hold).run() is True
    sent = [i for i, item in enumerate(timeline) if isinstance(item, tuple)]
    assert sum(timeline[i][1] for i in sent) == 3 * 6  # every token, each sent once
    if hold:  # sent from inside the next step, right after its launch
        assert all(timeline[i - 1] == "start" for i in sent[:-1])
    else:  # sent between steps, the moment engine.step returned them
        assert all(timeline[i - 1] == "end" for i in sent)


class _Cutter:
    """An outbox that asks for abort_all (the drain deadline) once tokens flow, then stop."""

    def __init__(self, inbox: queue.SimpleQueue[Command]) -> None:
        self.inbox, self.events_seen = inbox, []

    def admitted(self, request: EngineRequest, result: int | Exception) -> None:
        assert not isinstance(result, Exception), result

    def events(self, batch: list[tuple[EngineRequest, Event]], trace_index: int | None) -> None:
        if not self.events_seen:
            self.inbox.put(("abort_all", None))
            self.inbox.put(("stop", None))
        self.events_seen += [(request.key, event) for request, event in batch]


@pytest.mark.parametrize("hold", [True, False])
def test_abort_all_ends_every_request_with_a_503_error_never_a_finish_reason(hold):
    engine = LLMEngine(EngineConfig(model="tiny", max_num_seqs=4, max_model_len=96))
    inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
    params = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)
    for key in range(2):
        inbox.put(("submit", EngineRequest(key, [5, 6, 7, key + 8], params, time.monotonic())))
    outbox = _Cutter(inbox)
    assert EngineLoop(engine, inbox, outbox, EngineMetrics(CollectorRegistry()), hold=hold).run() is True
    for key in range(2):
        events = [event for k, event in outbox.events_seen if k == key]
        *tokens, last = events
        assert tokens and all(isinstance(e, tuple) and e[1] is None for e in tokens)  # no finish reason
        assert isinstance(last, Unavailable) and last.reason == "draining"
    assert not engine.has_unfinished() and engine.scheduler.block_manager.num_used_blocks == 0
