"""One request between the event loop and the engine thread, and the errors that can end it.

The engine thread never touches asyncio objects directly: it posts through the request's event loop
with loop.call_soon_threadsafe, the only path between the two threads (one call per step for all of
a step's tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from graphrun.errors import GraphrunError
from graphrun.llm.sampling_params import SamplingParams

Event = tuple[int | None, str | None] | Exception  # (token id, finish reason), or why the request failed


class Unavailable(GraphrunError, RuntimeError):
    """The server cannot take requests now; `reason` is the worker's state (starting, draining...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class QueueFull(GraphrunError, RuntimeError):
    """More requests are in flight than the engine runs at once plus the queue holds."""


class EngineFailure(GraphrunError, RuntimeError):
    """The engine step that carried this request raised; the request is over."""


@dataclass(frozen=True, slots=True)
class Delta:
    """New text of a request, the token ids that arrived since the last delta, and its finish reason."""

    text: str
    finish_reason: str | None
    token_ids: tuple[int, ...] = ()


class RequestHandle:
    """A submitted request: what the engine thread needs, and the queue its tokens come back through.

    The HTTP side awaits `admitted` (the engine's seq id, or its rejection), then reads tokens with
    `next_tokens()`. The engine thread writes both with `post_admission` and `post_step`.
    """

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        stop: tuple[str, ...],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.stop = stop
        self.loop = loop
        self.admitted: asyncio.Future[int] = loop.create_future()
        self.num_output_tokens = 0  # event-loop side
        self.finish_reason: str | None = None  # event-loop side: set once the request is over
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        # engine-thread side
        self.seq_id: int | None = None
        self.arrival = time.monotonic()
        self.last_token_time: float | None = None

    async def next_tokens(self) -> tuple[list[int], str | None]:
        """Every token that arrived since the last call (waits for one), and the finish reason if over."""
        events = [await self._events.get()]
        while not self._events.empty():
            events.append(self._events.get_nowait())
        token_ids: list[int] = []
        reason = None
        for event in events:
            if isinstance(event, Exception):
                raise event
            token, finished = event
            if token is not None:
                token_ids.append(token)
            reason = reason or finished
        self.num_output_tokens += len(token_ids)
        return token_ids, reason

    def post_admission(self, result: int | Exception) -> None:
        """(engine thread) The seq id, or why the engine refused the request."""
        call_in_loop(self.loop, self._admit, result)

    def _admit(self, result: int | Exception) -> None:
        if self.admitted.done():
            return  # the waiter gave up (cancelled)
        if isinstance(result, Exception):
            self.admitted.set_exception(result)
        else:
            self.admitted.set_result(result)


def post_step(events: list[tuple[RequestHandle, Event]]) -> None:
    """(engine thread) Hand one step's events to their requests: one call_soon_threadsafe per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, Event]]] = {}
    for handle, event in events:
        by_loop.setdefault(handle.loop, []).append((handle, event))
    for loop, batch in by_loop.items():
        call_in_loop(loop, _deliver, batch)


def _deliver(batch: list[tuple[RequestHandle, Event]]) -> None:
    """(event loop) Put events into their requests' queues."""
    for handle, event in batch:
        handle._events.put_nowait(event)


def call_in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> None:
    """loop.call_soon_threadsafe, ignoring a loop that has closed (the server is gone)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)
