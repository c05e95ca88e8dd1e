"""One request as the HTTP side sees it, the errors that can end it, and the engine's requests.

The HTTP side holds a `RequestHandle`: a future for admission and a sink for events. Whatever runs the
engine (a thread of this process or a process of its own, worker.py) feeds them, always on the handle's
event loop: from another thread only through loop.call_soon_threadsafe (`post_admission`, `post_step`).
A request ends with exactly one terminal event (a finish reason, or an error); `on_done` runs then,
once, on the event loop: the worker's count of requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from graphrun.errors import GraphrunError
from graphrun.llm.logprobs import TokenLogprobs
from graphrun.llm.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class PromptCached:
    """How many prompt tokens the engine's prefix cache held for the request (before its first token)."""

    num_tokens: int


@dataclass(frozen=True, slots=True)
class PromptLogprobs:
    """The logprobs of the prompt's tokens but the first (echo with logprobs), before the first token."""

    items: tuple[TokenLogprobs, ...]


# (token id, finish reason), or why the request failed, or the prefix-cache hit, or the logprobs of the
# token whose event comes next, or the prompt's (none of the last three is ever terminal)
Event = tuple[int | None, str | None] | Exception | PromptCached | TokenLogprobs | PromptLogprobs


class Unavailable(GraphrunError, RuntimeError):
    """The server cannot take requests now; `reason` is the worker's state (starting, draining...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, str(self)))


class QueueFull(GraphrunError, RuntimeError):
    """More requests are in flight than the engine runs at once plus the queue holds."""


class EngineFailure(GraphrunError, RuntimeError):
    """The engine step that carried this request raised, or the engine is gone; the request is over."""


@dataclass(frozen=True, slots=True)
class Delta:
    """New text of a request, the token ids that arrived since the last delta, and its finish reason."""

    text: str
    finish_reason: str | None
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprobs, ...] = ()  # one per token id when the request asked for them


@dataclass(slots=True)
class EngineRequest:
    """A request on the engine's side: what add_request needs, and where its events go (`key`)."""

    key: Hashable  # the RequestHandle itself (engine thread), or its request id (engine process)
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float  # time.monotonic() at submission: CLOCK_MONOTONIC, the same clock in every process
    seq_id: int | None = None
    last_token_time: float | None = None


def is_terminal(event: Event) -> bool:
    """True for the event that ends a request: an error or a finish reason."""
    if isinstance(event, PromptCached | TokenLogprobs | PromptLogprobs):
        return False
    return isinstance(event, Exception) or event[1] is not None


class RequestHandle:
    """A submitted request: the admission future, and the callback its events go to (held until attached).

    The HTTP side awaits `admitted` (the engine's seq id, or its rejection), then `attach`es a callback
    that takes each event as it is delivered: no task wakes per token (sse.py, deltas.Collected). Events
    that arrive before that wait in the handle.
    """

    def __init__(
        self,
        request_id: int,
        prompt_ids: list[int],
        params: SamplingParams,
        stop: tuple[str, ...],
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[RequestHandle], None] | None = None,
        choice: int = 0,
    ) -> None:
        self.request_id = request_id
        self.choice = choice  # its index among the n choices of its prompt
        self.prompt_ids = prompt_ids
        self.params = params
        self.stop = stop
        self.loop = loop
        self.arrival = time.monotonic()
        self.admitted: asyncio.Future[int] = loop.create_future()
        self.num_output_tokens = 0  # counted by the reader (deltas.py)
        self.num_cached_tokens = 0  # prompt tokens the prefix cache held (a PromptCached event)
        self.finish_reason: str | None = None  # set by the reader once the request is over
        self.done = False  # its terminal event has arrived (set on the event loop)
        self._events: list[Event] = []  # delivered before attach()
        self._sink: Callable[[Event], None] | None = None
        self._on_done = on_done

    def attach(self, sink: Callable[[Event], None]) -> None:
        """(event loop) From now on hand every event to `sink` as it is delivered, starting with those
        that arrived before. sink must not raise."""
        events, self._events = self._events, []
        self._sink = sink
        for event in events:
            sink(event)

    # ----- on the event loop ------------------------------------------------------------------------

    def admit(self, result: int | Exception) -> None:
        """The engine's seq id, or why it refused the request (which ends it)."""
        if not self.admitted.done():  # else the waiter gave up (cancelled)
            if isinstance(result, Exception):
                self.admitted.set_exception(result)
            else:
                self.admitted.set_result(result)
        if isinstance(result, Exception):
            self._finish()

    def put(self, event: Event) -> None:
        """One event from the engine (a PromptCached one is kept here, not passed on)."""
        if isinstance(event, PromptCached):
            self.num_cached_tokens = event.num_tokens
            return
        if self._sink is not None:
            self._sink(event)
        else:
            self._events.append(event)
        if is_terminal(event):
            self._finish()

    def fail(self, error: Exception) -> None:
        """End the request with `error`, whether it was admitted yet or not (the engine is gone)."""
        if self.done:
            return
        if self.admitted.done():
            self.put(error)
        else:
            self.admit(error)

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            if self._on_done is not None:
                self._on_done(self)

    # ----- from another thread ----------------------------------------------------------------------

    def post_admission(self, result: int | Exception) -> None:
        """(engine thread) The seq id, or why the engine refused the request."""
        call_in_loop(self.loop, self.admit, result)


def post_step(events: list[tuple[RequestHandle, Event]]) -> None:
    """(engine thread) Hand one step's events to their requests: one call_soon_threadsafe per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, Event]]] = {}
    for handle, event in events:
        by_loop.setdefault(handle.loop, []).append((handle, event))
    for loop, batch in by_loop.items():
        call_in_loop(loop, deliver, batch)


def deliver(batch: list[tuple[RequestHandle, Event]]) -> None:
    """(event loop) Put events into their requests' queues."""
    for handle, event in batch:
        handle.put(event)


def call_in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> None:
    """loop.call_soon_threadsafe, ignoring a loop that has closed (the server is gone)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)
