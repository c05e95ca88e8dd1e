"""How much a request may send: a body over --max-request-bytes gets 413 before it is read into memory.

Two checks, both before the app holds more than the limit:
- Content-Length over the limit: 413 at once, from here; the app is never called, no body byte is read
  (a client that sent `Expect: 100-continue` is never told to send it), and what the client sends
  anyway is never kept: uvicorn drops it as it arrives (httptools) or closes the connection (h11).
- A body without Content-Length (chunked) is counted as the app receives it, and the message that would
  pass the limit raises `BodyTooLarge` instead of being returned: at most the limit plus one network
  chunk is ever held. FastAPI passes an HTTPException raised while it reads a body on to the app's
  error handlers, which answer 413 in the OpenAI shape (app.py); one that escapes the app is answered here.

Only `receive` is wrapped (a body arrives in one or a few messages), never `send`: a streamed answer's
chunks pass untouched, so this adds no work per chunk.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphrun.serve.protocol import APIError
from graphrun.serve.refusal import RefusalHook, send_refusal


class BodyTooLarge(HTTPException):
    """A request body passed the limit while it was read; `error` is its answer."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.status, error.message)
        self.error = error


def too_large(max_bytes: int, num_bytes: int | None = None) -> APIError:
    """The 413 answer; num_bytes: the body's declared size, when known."""
    size = f"has {num_bytes} bytes, more than" if num_bytes is not None else "passed"
    message = (
        f"the request body {size} this server's limit of {max_bytes} bytes (--max-request-bytes); "
        "send a smaller body"
    )
    return APIError(413, message, code="request_too_large")


class BodyLimit:
    """ASGI middleware: 413 for a request body over max_bytes, without reading it whole."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_refused: RefusalHook | None = None) -> None:
        self.app, self.max_bytes, self._on_refused = app, max_bytes, on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = content_length(scope["headers"])
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send, too_large(self.max_bytes, declared))
            return
        try:
            await self.app(scope, _CountingReceive(receive, self.max_bytes), send)
        except BodyTooLarge as exc:  # raised past the app's handlers (not read through FastAPI)
            await self._refuse(scope, send, exc.error)

    async def _refuse(self, scope: Scope, send: Send, error: APIError) -> None:
        if self._on_refused is not None:
            self._on_refused(scope["path"], error.status)
        await send_refusal(send, error)


class _CountingReceive:
    """A receive that raises BodyTooLarge instead of returning the body bytes that pass the limit."""

    __slots__ = ("_max_bytes", "_num_bytes", "_receive")

    def __init__(self, receive: Receive, max_bytes: int) -> None:
        self._receive, self._max_bytes, self._num_bytes = receive, max_bytes, 0

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._num_bytes += len(message.get("body", b""))
            if self._num_bytes > self._max_bytes:
                raise BodyTooLarge(too_large(self._max_bytes))
        return message


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length header's value; None when absent or not a plain non-negative integer."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None
