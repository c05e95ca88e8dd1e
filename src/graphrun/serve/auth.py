"""Who may call: API keys, checked before a request reaches its route and before its body is read.

With keys configured (--api-key, GRAPHRUN_API_KEY), a request must carry `Authorization: Bearer <key>`
for one of them, else it gets 401 with an OpenAI error body and a WWW-Authenticate header, and the app
never sees it. Open without a key: /health (load balancers and orchestrators probe it), /metrics (unless
--metrics-require-api-key) and the API description (/openapi.json, /docs, /redoc). Every other path is
closed, /v1/* and any route added later alike: the list names what is open, not what is protected.

Why a pure ASGI middleware, not a FastAPI dependency: a dependency runs after FastAPI has read and parsed
the body, so a caller without a key could still make the server read megabytes of JSON; and this wraps
neither receive nor send, so a stream's chunks go to the server untouched (sse.py drives the send by
hand): no work per chunk, one header scan and one hash per request.

The compare is constant-time: the presented key and each configured key are hashed (SHA-256, so every
compared value has the same length) and compared with hmac.compare_digest, all of them every time, so the
time taken says neither which key was close nor how long the keys are.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from graphrun.serve.config import ServeConfig
from graphrun.serve.protocol import APIError
from graphrun.serve.refusal import RefusalHook, send_refusal

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
METRICS_PATH = "/metrics"
_REALM = 'Bearer realm="graphrun"'


class APIKeyAuth:
    """ASGI middleware: 401 for a request to a closed path without a valid bearer key."""

    def __init__(
        self,
        app: ASGIApp,
        api_keys: tuple[str, ...],
        metrics_require_api_key: bool = False,
        on_refused: RefusalHook | None = None,
    ) -> None:
        self.app = app
        self._digests = tuple(_digest(key.encode()) for key in api_keys)  # the keys themselves are not kept
        self._open = open_paths(metrics_require_api_key)
        self._on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._digests or scope["path"] in self._open:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope["headers"])
        if token is not None and self.accepts(token):
            await self.app(scope, receive, send)
            return
        if self._on_refused is not None:
            self._on_refused(scope["path"], 401)
        await send_refusal(send, unauthorized(missing=token is None))

    def accepts(self, token: bytes) -> bool:
        """Whether token is one of the keys; every key is compared, whatever matched."""
        presented = _digest(token)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched


def open_paths(metrics_require_api_key: bool) -> frozenset[str]:
    """The paths answered without a key."""
    return OPEN_PATHS if metrics_require_api_key else OPEN_PATHS | {METRICS_PATH}


def requires_key(config: ServeConfig, path: str) -> bool:
    """Whether a request to `path` needs a key under `config` (for the OpenAPI document)."""
    return bool(config.api_keys) and path not in open_paths(config.metrics_require_api_key)


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of the first Authorization header when its scheme is Bearer (any case); else None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            token = token.strip()
            return token if scheme.lower() == b"bearer" and token else None
    return None


def unauthorized(missing: bool) -> APIError:
    """The 401 answer: no key sent, or a key that is not one of the server's (never quoted back)."""
    if missing:
        message = "this server requires an API key: send the header `Authorization: Bearer <key>`"
        return APIError(401, message, code="missing_api_key", headers={"WWW-Authenticate": _REALM})
    message = "the API key is not valid for this server; check the key the client sends"
    challenge = f'{_REALM}, error="invalid_token"'
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": challenge})


def log_access_policy(config: ServeConfig) -> None:
    """One start-up line on who may call; a WARNING when the server listens beyond this machine, keyless."""
    if config.api_keys:
        closed = "every route but /health" + ("" if config.metrics_require_api_key else " and /metrics")
        log.info("API key required on %s (keys accepted: %d)", closed, len(config.api_keys))
    elif not config.loopback_only:
        log.warning(
            "listening on %s with no API key: anyone who can reach this port can use the model; "
            "set GRAPHRUN_API_KEY (or --api-key), or bind --host 127.0.0.1",
            config.host or "every interface",
        )


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
