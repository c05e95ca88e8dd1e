"""An error answer written straight to the ASGI send, by the middlewares that refuse a request before it
reaches the app (auth.py: 401; body_limit.py: 413).

The body is the app's own: `APIError.json()`, the OpenAI error shape, so a client cannot tell which
layer answered.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Send

from graphrun.serve.protocol import APIError

# Told of each refusal (the request's path and the answer's status), e.g. to count it in /metrics
RefusalHook = Callable[[str, int], None]


async def send_refusal(send: Send, error: APIError) -> None:
    """Send `error` as the whole response: status, JSON body and its headers (WWW-Authenticate, ...)."""
    body = error.json().encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
