"""The host loop alone (no server, no transport) over the LLM engine's served model: when a step's
tokens leave for the streams (held or at once), and what AbortAll and Stop leave behind."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any

import pytest

from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams
from graphrun.serve.config import ServeConfig
from graphrun.serve.host.host_loop import HostLoop, HostPlan
from graphrun.serve.host.messages import AbortAll, Admitted, Events, Ready, Stop, ToClient, Unavailable
from graphrun.serve.llm_messages import Submit
from graphrun.serve.llm_model import LLMServedModel

ENGINE = EngineConfig(model="tiny", max_num_seqs=4, max_model_len=96)


class _TracedModel(LLMServedModel):
    """The LLM served model with its steps' starts and ends written into a shared timeline."""

    timeline: list[Any]

    def step(self, on_launched: Any) -> Any:
        self.timeline.append("start")
        out = super().step(on_launched)
        self.timeline.append("end")
        return out


def _submit(host: HostLoop, num: int, max_tokens: int) -> None:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for rid in range(num):
        host.accept(Submit((rid,), (5, 6, 7, rid + 8), params, time.monotonic()))


@pytest.mark.parametrize("hold", [True, False])
def test_events_leave_after_the_next_launch_when_held_and_as_soon_as_resolved_otherwise(hold):
    timeline: list[Any] = []
    left = [3]

    def build() -> _TracedModel:
        model = _TracedModel(ENGINE, ServeConfig())
        model.timeline = timeline
        return model

    def send(message: ToClient) -> None:
        if isinstance(message, Events):
            timeline.append(("events", len(message.batch)))
            left[0] -= sum(
                1 for _, event in message.batch if isinstance(event, tuple) and event[1] is not None
            )
            if left[0] == 0:
                host.accept(Stop())
        elif isinstance(message, Admitted):
            assert not isinstance(message.result, Exception), message.result

    host = HostLoop(HostPlan(build), send, hold=hold)
    _submit(host, 3, 6)
    assert host.run() is True
    sent = [i for i, item in enumerate(timeline) if isinstance(item, tuple)]
    assert sum(timeline[i][1] for i in sent) == 3 * 6  # every token, each sent once
    if hold:  # sent from inside the next step, right after its launch
        assert all(timeline[i - 1] == "start" for i in sent[:-1])
    else:  # sent between steps, the moment the step returned them
        assert all(timeline[i - 1] == "end" for i in sent)


@pytest.mark.parametrize("hold", [True, False])
def test_abort_all_ends_every_request_with_a_503_error_never_a_finish_reason(hold):
    seen: list[tuple[int, Any]] = []
    models: list[LLMServedModel] = []

    def build() -> LLMServedModel:
        models.append(LLMServedModel(ENGINE, ServeConfig()))
        return models[0]

    def send(message: ToClient) -> None:
        if isinstance(message, Events):
            if not seen:
                host.accept(AbortAll())
                host.accept(Stop())
            seen.extend(message.batch)

    host = HostLoop(HostPlan(build), send, hold=hold)
    _submit(host, 2, 64)
    assert host.run() is True
    for rid in range(2):
        *tokens, last = [event for r, event in seen if r == rid]
        assert tokens and all(isinstance(e, tuple) and e[1] is None for e in tokens)  # no finish reason
        assert isinstance(last, Unavailable) and last.reason == "draining"
    engine = models[0].engine
    assert not engine.has_unfinished() and engine.scheduler.block_manager.num_used_blocks == 0


def test_a_model_that_cannot_start_says_so_and_the_loop_ends():
    sent: list[ToClient] = []

    def build() -> LLMServedModel:
        return LLMServedModel(EngineConfig(model="no-such-preset"), ServeConfig())

    assert HostLoop(HostPlan(build), sent.append, hold=False).run() is False
    assert len(sent) == 1 and "no-such-preset" in getattr(sent[0], "reason", "")
    assert not any(isinstance(message, Ready) for message in sent)


def test_a_dead_tensor_parallel_rank_ends_the_loop_fails_its_requests_and_stops_the_workers(caplog):
    """Rank 1 is killed once tokens flow: the step raises RankFailure, which the loop does not survive
    (a server then shuts down with exit status 1); both requests end with an error, no process is left."""
    sent: list[ToClient] = []
    models: list[LLMServedModel] = []

    def build() -> LLMServedModel:
        models.append(LLMServedModel(dataclasses.replace(ENGINE, tensor_parallel_size=2), ServeConfig()))
        return models[0]

    def send(message: ToClient) -> None:
        sent.append(message)
        if isinstance(message, Events) and sum(isinstance(m, Events) for m in sent) == 1:
            os.kill(models[0].engine.worker_pids[0], signal.SIGKILL)

    host = HostLoop(HostPlan(build), send, hold=False)
    _submit(host, 2, 80)
    start = time.monotonic()
    assert host.run() is False
    assert time.monotonic() - start < 60
    ends = [e for m in sent if isinstance(m, Events) for _, e in m.batch if isinstance(e, Exception)]
    assert len(ends) == 2 and all(isinstance(e, Unavailable) for e in ends)
    assert "tensor-parallel rank 1 was killed by signal 9" in caplog.text
    (pid,) = models[0].engine.worker_pids
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
