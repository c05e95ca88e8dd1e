"""One request as the HTTP side sees it: a future for its admission and a sink for its events.

The client feeds a handle on its event loop only. A request ends with exactly one terminal event (a
finish reason, or an error); `on_done` runs then, once: the client's count of requests in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from graphrun.serve.host.messages import Event, PromptCached, is_terminal


class RequestHandle:
    """The HTTP side awaits `admitted` (the seq id, or the refusal), then `attach`es a callback that takes
    each event as it is delivered: no task wakes per token (sse.py, deltas.Collected). Events that arrive
    before that wait here."""

    def __init__(
        self,
        request_id: int,
        prompt_ids: list[int],
        stop: tuple[str, ...],
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[RequestHandle], None] | None = None,
        choice: int = 0,
    ) -> None:
        self.request_id, self.choice = request_id, choice  # choice: its index among its prompt's n
        self.prompt_ids, self.stop = prompt_ids, stop
        self.admitted: asyncio.Future[int] = loop.create_future()
        self.num_output_tokens = 0  # counted by the reader (deltas.py)
        self.num_cached_tokens = 0  # prompt tokens the prefix cache held (a PromptCached event)
        self.finish_reason: str | None = None  # set by the reader once the request is over
        self.done = False  # its terminal event has arrived
        self._events: list[Event] = []  # delivered before attach()
        self._sink: Callable[[Event], None] = self._events.append
        self._on_done = on_done

    def attach(self, sink: Callable[[Event], None]) -> None:
        """Hand every event to `sink` (which must not raise) from now on, those that came before first."""
        events, self._events = self._events, []
        self._sink = sink
        for event in events:
            sink(event)

    def admit(self, result: int | Exception) -> None:
        """The seq id, or why the model refused the request (which ends it)."""
        if not self.admitted.done():  # else the waiter gave up (cancelled)
            if isinstance(result, Exception):
                self.admitted.set_exception(result)
            else:
                self.admitted.set_result(result)
        if isinstance(result, Exception):
            self._finish()

    def put(self, event: Event) -> None:
        """One event from the model (a PromptCached one is kept here, not passed on)."""
        if isinstance(event, PromptCached):
            self.num_cached_tokens = event.num_tokens
            return
        self._sink(event)
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
