"""The engine host over both transports, with a small served model of its own (no LLM): every message
type crosses intact, and submit, events, abort, questions, drain and stop mean the same on each."""

from __future__ import annotations

import asyncio
import os
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from graphrun.llm.logprobs import TokenLogprobs
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.tokenizer import ByteTokenizer
from graphrun.serve.host.host_loop import HostPlan
from graphrun.serve.host.messages import (
    Abort,
    AbortAll,
    Admitted,
    Answer,
    Ask,
    Delivered,
    Events,
    Question,
    Ready,
    StartFailed,
    Stop,
    Unavailable,
)
from graphrun.serve.host.served_model import StepOutcome
from graphrun.serve.host.transport import PipeTransport, ThreadTransport, Transport
from graphrun.serve.llm_client import LLMClient
from graphrun.serve.llm_handle import LLMHandle
from graphrun.serve.llm_messages import Event, ModelInfo, PromptCached, PromptLogprobs, Submit, is_terminal

START_TIMEOUT = 120.0  # a spawned process imports torch: only a broken host reaches this


class Countdown:
    """A served model of its own kind: each request's tokens are its prompt's first id, counting down
    to 0 one per step (then "stop"); a prompt starting with 0 is refused."""

    def __init__(self) -> None:
        self._left: dict[int, int] = {}

    def info(self) -> ModelInfo:
        return ModelInfo(ByteTokenizer(), 258, 64, "countdown", {"engine_pid": os.getpid()})

    def submit(self, submit: Submit) -> list[int | Exception]:
        if submit.prompt_ids[0] == 0:
            return [ValueError("nothing to count")] * len(submit.request_ids)
        self._left.update((rid, submit.prompt_ids[0]) for rid in submit.request_ids)
        return list(submit.request_ids)

    def abort(self, request_id: int) -> bool:
        return self._left.pop(request_id, None) is not None

    def step(self, on_launched: Callable[[], None]) -> StepOutcome:
        on_launched()
        events: list[tuple[int, Event]] = []
        for rid in list(self._left):
            self._left[rid] -= 1
            events.append((rid, (self._left[rid], None if self._left[rid] else "stop")))
            if not self._left[rid]:
                del self._left[rid]
        return StepOutcome(events, None)

    def drain(self) -> list[int]:
        ids = list(self._left)
        self._left.clear()
        return ids

    def busy(self) -> bool:
        return bool(self._left)

    def has_idle_work(self) -> bool:
        return False

    def idle_work(self) -> None:
        pass

    def publish(self, num_queued: int) -> None:
        pass

    def close(self) -> None:
        pass

    def answer(self, question: Question) -> bytes | dict[str, Any] | str | None:
        return {Question.METRICS: b"countdown_steps 1\n", Question.PROGRESS: "off"}.get(question, {"a": 1})


class Endless(Countdown):
    """Countdown from a number too large to reach: a request ends only by abort, drain or stop."""

    def submit(self, submit: Submit) -> list[int | Exception]:
        return super().submit(Submit(submit.request_ids, (10**9,), submit.params, submit.arrival))


PARAMS = SamplingParams(max_tokens=8)
MESSAGES = [
    Submit((1, 2), (5, 6), PARAMS, 1.5),
    Abort(3),
    AbortAll(),
    Stop(),
    Ask(Question.MEMORY, 4),
    Delivered(5, 2.5),
    Ready(ModelInfo(ByteTokenizer(), 258, 64, "countdown", {"k": [1]})),
    StartFailed("ValueError: no"),
    Admitted(6, 7),
    Events(((1, (9, None)), (1, PromptCached(3)), (2, PromptLogprobs(()))), 8),
    Events(((1, TokenLogprobs(-0.5, (1,), (-0.5,))),)),
    Answer(9, b"text"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_type_pickles_to_an_equal_message(message):
    copy = pickle.loads(pickle.dumps(message))
    assert type(copy) is type(message)
    if isinstance(message, Ready):  # a tokenizer compares by identity: the fields that are values
        assert (copy.info.vocab_size, copy.info.source, copy.info.facts) == (
            64 + 194,
            "countdown",
            {"k": [1]},
        )
    else:
        assert copy == message


def _transports(model: Callable[[], Countdown]) -> list[Transport]:
    return [ThreadTransport(HostPlan(model)), PipeTransport(HostPlan(model))]


async def _started(transport: Transport) -> LLMClient:
    client = LLMClient(transport, max_in_flight=4)
    client.start()
    assert await asyncio.to_thread(client.wait_ready, START_TIMEOUT), client.state
    return client


async def _events(handle: LLMHandle) -> list[Event]:
    events: list[Event] = []
    over = asyncio.get_running_loop().create_future()

    def sink(event: Event) -> None:
        events.append(event)
        if is_terminal(event) and not over.done():
            over.set_result(None)

    handle.attach(sink)
    await asyncio.wait_for(over, START_TIMEOUT)
    return events


@pytest.mark.parametrize("kind", ["thread", "pipe"])
def test_requests_events_refusals_and_questions_cross_either_transport(kind):
    async def main() -> None:
        transport = _transports(Countdown)[kind == "pipe"]
        client = await _started(transport)
        try:
            assert (client.model.source, client.info["engine_pid"]) == ("countdown", transport.pid)
            assert (transport.pid != os.getpid()) == (kind == "pipe")
            first, second = client.submit_choices([3, 1], PARAMS, (), 2)
            assert await first.admitted == first.request_id
            assert await _events(first) == [(2, None), (1, None), (0, "stop")]
            assert await _events(second) == [(2, None), (1, None), (0, "stop")]
            (refused,) = client.submit_choices([0], PARAMS, ())
            with pytest.raises(ValueError, match="nothing to count"):
                await refused.admitted
            assert await client.metrics_text() == b"".join([(await _own(client)), b"countdown_steps 1\n"])
            assert await client.graphs() == "off"
            assert (await client.memory())["a"] == 1
            assert client.num_in_flight == 0
        finally:
            await asyncio.to_thread(client.stop)

    asyncio.run(main())


async def _own(client: LLMClient) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(client.registry)


@pytest.mark.parametrize("kind", ["thread", "pipe"])
def test_abort_drain_and_stop_end_requests_the_same_way_on_either_transport(kind):
    async def main() -> None:
        client = await _started(_transports(Endless)[kind == "pipe"])
        aborted, cut, stopped = (client.submit_choices([1], PARAMS, ())[0] for _ in range(3))
        client.abort(aborted)
        assert (await _events(aborted))[-1] == (None, "abort")
        assert await asyncio.to_thread(client.drain, 0.0) == 2  # the deadline has passed already
        for handle in (cut, stopped):
            last = (await _events(handle))[-1]
            assert isinstance(last, Unavailable) and last.reason == "draining"
        assert client.num_in_flight == 0
        await asyncio.to_thread(client.stop)
        assert client.state == "stopped"
        with pytest.raises(Unavailable):
            client.submit_choices([1], PARAMS, ())

    asyncio.run(main())
