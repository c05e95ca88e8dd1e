"""One request as the HTTP side sees it: a future for its admission and a sink for its events.

The client feeds a handle on its event loop only. A request ends with exactly one terminal event (here
its first: a result, an error or ABORTED; a streaming model's handle, llm_handle.py, ends on a finish
reason); `on_done` runs then, once: the client's count of requests in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic

from graphrun.serve.host.messages import E, Ended


class RequestHandle(Generic[E]):
    """The HTTP side awaits `admitted` (the seq id, or the refusal), then `attach`es a callback that takes
    each event as it is delivered: no task wakes per event. Events that arrive before that wait here."""

    def __init__(
        self,
        request_id: int,
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[RequestHandle[E]], None] | None = None,
    ) -> None:
        self.request_id = request_id
        self.admitted: asyncio.Future[int] = loop.create_future()
        self.done = False  # its terminal event has arrived
        self._events: list[E | Ended] = []  # delivered before attach()
        self._sink: Callable[[E | Ended], None] = self._events.append
        self._on_done = on_done

    def attach(self, sink: Callable[[E | Ended], None]) -> None:
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

    def put(self, event: E | Ended) -> None:
        """One event from the model: here the request's only one (a streaming model's handle overrides)."""
        self._sink(event)
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
