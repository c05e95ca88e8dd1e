"""A request's token batches -> the deltas a response carries: text, the ids behind it, the finish reason.

Shared by both ways the HTTP side reads a request (a streamed SSE response, sse.py; a collected answer,
`Collected`), so stop strings, the finish reason and the token count mean the same thing in each. It
runs on the event loop and never waits: the handle hands it each event as it is delivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from graphrun.llm.logprobs import TokenLogprobs
from graphrun.llm.tokenizer import Tokenizer
from graphrun.serve.llm_handle import LLMHandle
from graphrun.serve.llm_messages import Event, PromptCached, PromptLogprobs
from graphrun.serve.text import TextStream


@dataclass(frozen=True, slots=True)
class Delta:
    """New text of a request, the token ids that arrived since the last delta, and its finish reason."""

    text: str
    finish_reason: str | None
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprobs, ...] = ()  # one per token id when the request asked for them


class Deltas:
    """Turns one request's tokens into Deltas; sets the handle's finish_reason and num_output_tokens.

    A delta comes when there is text to send or the request ended (its token ids: every id since the
    last delta); with every_batch, one comes for every batch of tokens, even with no text. A stop
    string ends the request at once: `abort` is called (it frees the KV blocks; later tokens are dropped).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        handle: LLMHandle,
        abort: Callable[[], None],
        every_batch: bool = False,
    ) -> None:
        self._text = TextStream(tokenizer, handle.stop)
        self._handle, self._abort, self._every_batch = handle, abort, every_batch
        self._pending: list[int] = []  # ids not yet carried by a delta
        self._pending_logprobs: list[TokenLogprobs] = []  # their logprobs (when the request asked)

    @property
    def over(self) -> bool:
        """The request has ended (a finish reason, or a stop string)."""
        return self._handle.finish_reason is not None

    def push_event(self, event: Event) -> Delta | None:
        """push() for one event from the engine; an error event is raised."""
        if isinstance(event, Exception):
            raise event
        if isinstance(event, PromptCached | PromptLogprobs):  # never a delta (Collected keeps the prompt's)
            return None
        if isinstance(event, TokenLogprobs):  # the next token's: it travels with that token
            if not self.over:
                self._pending_logprobs.append(event)
            return None
        token, reason = event
        return self.push([] if token is None else [token], reason)

    def push(self, token_ids: list[int], reason: str | None) -> Delta | None:
        """The delta for tokens that arrived (and the finish reason, if the engine ended the request)."""
        handle = self._handle
        if handle.finish_reason is not None:
            return None  # over already (a stop string): what the engine sent after it is dropped
        handle.num_output_tokens += len(token_ids)
        self._pending += token_ids
        text, hit_stop = self._text.push(token_ids, final=reason is not None)
        if hit_stop:
            if reason is None:
                self._abort()
            reason = "stop"
        handle.finish_reason = reason
        if not (text or reason is not None or (self._every_batch and token_ids)):
            return None
        delta = Delta(text, reason, tuple(self._pending), tuple(self._pending_logprobs))
        self._pending, self._pending_logprobs = [], []
        return delta


class Collected:
    """(event loop) A non-streamed request's answer, gathered as its events are delivered (no task wakes
    per token). `done` resolves once the request is over, or fails with the error that ended it."""

    def __init__(self, deltas: Deltas) -> None:
        self._deltas = deltas
        self.texts: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprobs] = []
        self.prompt_logprobs: tuple[TokenLogprobs, ...] = ()  # echo with logprobs: the prompt's
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_event(self, event: Event) -> None:
        """The handle's sink: one event of the request."""
        if self.done.done():
            return  # over, or the reader left (close)
        if isinstance(event, PromptLogprobs):
            self.prompt_logprobs = event.items
            return
        try:
            delta = self._deltas.push_event(event)
        except Exception as exc:
            self.done.set_exception(exc)
            return
        if delta is not None:
            self.texts.append(delta.text)
            self.token_ids += delta.token_ids
            self.logprobs += delta.logprobs
        if self._deltas.over:
            self.done.set_result(None)

    def close(self) -> None:
        """The reader is gone: later events are ignored."""
        if not self.done.done():
            self.done.cancel()
