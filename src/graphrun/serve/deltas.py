"""A request's token batches -> the deltas a response carries: text, the ids behind it, the finish reason.

Shared by every way the HTTP side reads a request (a streamed SSE response, a collected answer), so
stop strings, the finish reason and the token count mean the same thing in each. It runs on the event
loop and never waits: the caller hands it what arrived.
"""

from __future__ import annotations

from collections.abc import Callable

from graphrun.llm.tokenizer import Tokenizer
from graphrun.serve.request import Delta, RequestHandle
from graphrun.serve.text import TextStream


class Deltas:
    """Turns one request's tokens into Deltas; sets the handle's finish_reason and num_output_tokens.

    A delta comes when there is text to send or the request ended (its token ids: every id since the
    last delta); with every_batch, one comes for every batch of tokens, even with no text. A stop
    string ends the request at once: `abort` is called (it frees the KV blocks; later tokens are dropped).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        handle: RequestHandle,
        abort: Callable[[], None],
        every_batch: bool = False,
    ) -> None:
        self._text = TextStream(tokenizer, handle.stop)
        self._handle, self._abort, self._every_batch = handle, abort, every_batch
        self._pending: list[int] = []  # ids not yet carried by a delta

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
        delta = Delta(text, reason, tuple(self._pending))
        self._pending = []
        return delta
