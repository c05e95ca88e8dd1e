"""An LLM request as the HTTP side sees it: the host's handle (host/handle.py) with its prompt, stop
strings and counts, ended by a finish reason or an error rather than by its first event."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from graphrun.serve.host.handle import RequestHandle
from graphrun.serve.llm_messages import Event, PromptCached, is_terminal


class LLMHandle(RequestHandle[Event]):
    """Events are handed on as delivered (sse.py, deltas.Collected attach to it); the reader keeps the
    counts and the finish reason here."""

    def __init__(
        self,
        request_id: int,
        prompt_ids: list[int],
        stop: tuple[str, ...],
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[RequestHandle[Event]], None] | None = None,
        choice: int = 0,
    ) -> None:
        super().__init__(request_id, loop, on_done)
        self.choice = choice  # its index among its prompt's n
        self.prompt_ids, self.stop = prompt_ids, stop
        self.num_output_tokens = 0  # counted by the reader (deltas.py)
        self.num_cached_tokens = 0  # prompt tokens the prefix cache held (a PromptCached event)
        self.finish_reason: str | None = None  # set by the reader once the request is over

    def put(self, event: Event) -> None:
        """One event from the model (a PromptCached one is kept here, not passed on); a finish reason or
        an error ends the request."""
        if isinstance(event, PromptCached):
            self.num_cached_tokens = event.num_tokens
            return
        self._sink(event)
        if is_terminal(event):
            self._finish()
