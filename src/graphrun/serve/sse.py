"""A streamed completion (SSE), written from the delivery of each engine step: no task wakes per token.

Why not StreamingResponse over an async generator: then every token of every stream wakes a task and
walks a chain of generators and queues (queue -> deltas -> chunk -> ASGI send) on the one event loop
that all streams share. At 16 streams and ~400 steps a second that kept the loop a third busy, and the
order the woken tasks ran in spread a step's chunks over about a millisecond: inter-token jitter. Here
the handle calls the stream back as each event is delivered (`LLMHandle.attach`), so the pass that
delivers a step's events detokenizes, formats and writes every stream's chunk.

The ASGI send is a coroutine, driven here by hand (`coro.send(None)`) as an eager task would be:
uvicorn's finishes without suspending unless the socket's buffer is full (a client that stopped
reading). Then the half-run send moves to a task of this stream's own and later chunks wait in its
backlog, so a slow client delays only itself.

A request with several choices (n > 1, several prompts) is one stream: each choice's handle calls back
with its index, each chunk carries that index, and the stream ends once every choice has finished.

Completions' echo (`PromptEcho`): each choice's first chunk is its prompt, written when its first token
arrives (the prompt's logprobs, when asked for, come just before it); with max_tokens 0 that chunk is the
choice's last (finish_reason "length") and the one token the engine generated is left out, as in a whole
answer (app.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from graphrun.errors import GraphrunError
from graphrun.llm.logprobs import TokenLogprobs
from graphrun.llm.tokenizer import Tokenizer
from graphrun.serve.llm_client import LLMClient
from graphrun.serve.llm_handle import LLMHandle
from graphrun.serve.llm_messages import Event, PromptLogprobs
from graphrun.serve.protocol import as_api_error
from graphrun.serve.responses import CompletionFormat, EchoedPrompt, ResponseFormat, Usage

log = logging.getLogger(__name__)


def sse_event(data: str) -> str:
    """One SSE event: the only place a stream's `data:` framing is written (chunks, errors, [DONE])."""
    return f"data: {data}\n\n"


DONE_EVENT = sse_event("[DONE]")


def choices_usage(handles: list[LLMHandle], prefix_caching: bool = False) -> Usage:
    """Token counts of a request's choices: each prompt once (its first choice's), every choice's output;
    with prefix caching, the prompt tokens the cache held (prompt_tokens_details.cached_tokens)."""
    firsts = [h for h in handles if h.choice == 0]
    num_cached = sum(h.num_cached_tokens for h in firsts) if prefix_caching else None
    return Usage.of(
        sum(len(h.prompt_ids) for h in firsts), sum(h.num_output_tokens for h in handles), num_cached
    )


@dataclass(frozen=True, slots=True)
class PromptEcho:
    """How a completions stream echoes its prompts: the format that writes the prompt chunk, the tokenizer
    that reads the prompt back, and whether the prompt is the whole answer (max_tokens 0)."""

    fmt: CompletionFormat
    tokenizer: Tokenizer
    prompt_only: bool


class SSEResponse(Response):
    """`data: {chunk}` events of the admitted choices (handles[i] at index i), then `data: [DONE]`; a
    failure after the headers is a last `data: {"error": ...}` event. Counts the request's outcome in the
    client's metrics.

    every_batch (return_token_ids): a chunk per batch of tokens from the engine, even with no text.
    continuous_usage (stream_options.continuous_usage_stats): every chunk carries the counts so far.
    prefix_caching: the engine caches prefixes, so usage says how many prompt tokens were cached.
    echo (completions' echo): each choice's first chunk is its prompt.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        worker: LLMClient,
        handles: list[LLMHandle],
        fmt: ResponseFormat,
        watcher: asyncio.Task[None],
        include_usage: bool,
        every_batch: bool,
        continuous_usage: bool = False,
        prefix_caching: bool = False,
        echo: PromptEcho | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._worker, self._handles, self._fmt, self._watcher = worker, handles, fmt, watcher
        self._include_usage, self._continuous_usage = include_usage, continuous_usage
        self._deltas = [worker.deltas(handle, every_batch) for handle in handles]
        self._num_open = len(handles)  # choices not finished yet
        self._prefix_caching = prefix_caching  # usage reports prompt_tokens_details.cached_tokens
        self._observer = worker.observer
        self._writer = _Writer()
        self._status = "aborted"  # unless the stream reaches its end
        self._over = False  # the last event is written (or on its way): nothing more is taken
        self._echo = echo
        # per choice, with echo: the prompt's logprobs until its prompt chunk is written, then None
        self._echo_pending: list[tuple[TokenLogprobs, ...] | None] = [
            () if echo is not None else None for _ in handles
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handles, worker = self._handles, self._worker
        try:
            start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            await send(start)
            closed = self._writer.open(send)
            usage = self._usage_so_far()
            chunks = [chunk for index in range(len(handles)) for chunk in self._fmt.opening(usage, index)]
            if chunks:
                self._writer.write("".join(sse_event(chunk) for chunk in chunks).encode())
            for index, handle in enumerate(handles):
                handle.attach(partial(self._on_event, index))
            await closed
        finally:
            self._over = True
            self._writer.cancel()  # cancelled (the server is stopping): no write outlives the response
            self._watcher.cancel()
            for handle in handles:
                if handle.finish_reason is None:
                    worker.abort(handle)  # the client went away, or the server is stopping
            worker.metrics.count(self._status)

    def _on_event(self, index: int, event: Event) -> None:
        """(event loop, from handle `index`) One event of that choice: write its chunk, or the end."""
        if self._over:
            return
        try:
            if self._echo_pending[index] is not None and self._echo_prompt(index, event):
                return
            delta = self._deltas[index].push_event(event)
            if delta is None:
                return
            fmt = self._fmt
            usage = self._usage_so_far() if self._continuous_usage else None  # off: no call per chunk
            ids = list(delta.token_ids)
            text = fmt.chunk(delta.text, delta.finish_reason, ids, usage, index, delta.logprobs)
            self._write(index, sse_event(text), delta.finish_reason is not None)
        except Exception as exc:
            self._fail(exc)

    def _write(self, index: int, event: str, last_of_choice: bool) -> None:
        """Write one chunk of choice `index` (the stream's end after the last choice's last chunk)."""
        if last_of_choice:
            self._num_open -= 1
        if self._num_open:
            self._writer.write(event.encode())
        else:
            self._end(event)
        if self._observer is not None:
            self._observer.sent(self._handles[index].request_id)

    def _echo_prompt(self, index: int, event: Event) -> bool:
        """(echo, before choice `index`'s prompt chunk) Keep the prompt's logprobs; write the prompt chunk
        at the first token. True when the event is used up (the logprobs; the token when the prompt is the
        whole answer: the choice ends there, finish_reason "length", no output token counted)."""
        if isinstance(event, PromptLogprobs):
            self._echo_pending[index] = event.items
            return True
        if not isinstance(event, tuple):
            return False  # an error, the cache hit, the token's logprobs: as without echo
        echo, handle = self._echo, self._handles[index]
        assert echo is not None
        prompt = EchoedPrompt(
            echo.tokenizer.decode(handle.prompt_ids), handle.prompt_ids, self._echo_pending[index] or ()
        )
        self._echo_pending[index] = None
        if echo.prompt_only:
            handle.finish_reason, handle.num_output_tokens = "length", 0
            if event[1] is None:
                self._worker.abort(handle)  # the engine has not ended it (it asked for one token)
        reason = "length" if echo.prompt_only else None
        usage = self._usage_so_far()
        self._write(index, sse_event(echo.fmt.prompt_chunk(prompt, reason, usage, index)), echo.prompt_only)
        return echo.prompt_only

    def _usage_so_far(self) -> Usage | None:
        """The counts so far when every chunk carries them (the tokens the deltas have taken), else None."""
        if not self._continuous_usage:
            return None
        return choices_usage(self._handles, self._prefix_caching)

    def _end(self, last_chunk: str) -> None:
        handles = self._handles
        parts = [last_chunk]
        if self._include_usage:
            usage = choices_usage(handles, self._prefix_caching)
            parts.append(sse_event(self._fmt.usage_chunk(usage)))
        parts.append(DONE_EVENT)
        aborted = any(handle.finish_reason == "abort" for handle in handles)
        self._status = "aborted" if aborted else "ok"
        self._over = True
        self._writer.write("".join(parts).encode(), last=True)

    def _fail(self, exc: Exception) -> None:
        self._status = "error"
        if not isinstance(exc, GraphrunError):
            log.exception("stream %s failed", self._fmt.id)
        self._over = True
        self._writer.write(sse_event(as_api_error(exc).json()).encode(), last=True)


class _Writer:
    """Writes body parts through an ASGI send in order, without a task unless the send must wait.

    `closed` resolves once the last part is written (or a send failed: the client is gone).
    """

    def __init__(self) -> None:
        self._send: Send | None = None
        self.closed: asyncio.Future[None] | None = None
        self._backlog: list[bytes] = []
        self._last_queued = False
        self._task: asyncio.Task[None] | None = None  # finishing a send that had to wait, then the backlog

    def open(self, send: Send) -> asyncio.Future[None]:
        """Start writing through `send` (the response's headers are sent); returns `closed`."""
        self._send = send
        self.closed = asyncio.get_running_loop().create_future()
        return self.closed

    def write(self, data: bytes, last: bool = False) -> None:
        """Send data now if the connection takes it, else after what waits before it; last ends the body."""
        if self.closed is None or self.closed.done() or self._last_queued:
            return
        if self._task is not None:
            self._backlog.append(data)
            self._last_queued = last
            return
        self._last_queued = last
        # an ASGI send is an async def (a coroutine); the Send type only promises an awaitable
        coro = cast(Coroutine[Any, Any, None], self._send_part(data, last))
        try:
            blocker = coro.send(None)
        except StopIteration:
            if last:
                self._close()
            return
        except Exception as exc:  # the connection is broken: nothing more can be written
            self._close(exc)
            return
        self._task = asyncio.get_running_loop().create_task(self._finish(coro, blocker))

    def cancel(self) -> None:
        """Stop writing (the response is over); a send that was waiting is cancelled."""
        if self._task is not None:
            self._task.cancel()
        if self.closed is not None and not self.closed.done():
            self.closed.cancel()

    async def _finish(self, coro: Coroutine[Any, Any, None], blocker: Any) -> None:
        """Run the send that had to wait to its end, then send the backlog (one part per round)."""
        try:
            await _resume(coro, blocker)
            while self._backlog:
                data, self._backlog = b"".join(self._backlog), []
                await self._send_part(data, self._last_queued)  # nothing is queued after the last part
        except Exception as exc:
            self._close(exc)
            return
        finally:
            self._task = None
        if self._last_queued:
            self._close()

    def _send_part(self, data: bytes, last: bool) -> Awaitable[None]:
        """The ASGI send of one body part (last: the end of the body)."""
        assert self._send is not None
        return self._send({"type": "http.response.body", "body": data, "more_body": not last})

    def _close(self, error: Exception | None = None) -> None:
        if error is not None:
            log.debug("stream write failed (%s: %s): the client is gone", type(error).__name__, error)
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)


async def _resume(coro: Coroutine[Any, Any, None], blocker: Any) -> None:
    """Drive a coroutine that was started by hand and suspended on `blocker` (what it yielded) to its end,
    as the task running it would have: wait until what it waits for is done, then resume it (the
    coroutine reads the future's result or error itself). Only a future's public API is used: waiting
    through asyncio.wait leaves the future to the coroutine that yielded it."""
    while True:
        try:
            if blocker is None:
                await asyncio.sleep(0)  # a bare yield: it only gave way to other tasks
            else:
                await asyncio.wait((blocker,))
        except BaseException as exc:  # this task was cancelled: the coroutine sees it, as under a task
            if blocker is not None:
                blocker.cancel()
            try:
                blocker = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                blocker = coro.send(None)
            except StopIteration:
                return
