"""What every tensor route's app (/v1/infer, /act) puts around its route: OpenAI-shaped error bodies,
the body limit and API keys, and each answer of the route counted by outcome (ok is the route's own)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from graphrun.errors import GraphrunError
from graphrun.serve.auth import APIKeyAuth
from graphrun.serve.body_limit import BodyLimit, BodyTooLarge
from graphrun.serve.config import ServeConfig
from graphrun.serve.protocol import APIError, as_api_error


def outcome_label(status: int) -> str:
    """The outcome label of a refused or failed answer."""
    return {429: "overloaded", 503: "unavailable"}.get(status, "error" if status >= 500 else "invalid")


def add_guards(app: FastAPI, path: str, count: Callable[[str], None], config: ServeConfig) -> None:
    """Error handlers and middleware for `app`; answers on `path` that they produce go to count(label)."""

    def answer(request: Request, error: APIError) -> Response:
        if request.url.path == path:
            count(outcome_label(error.status))
        return Response(error.json(), error.status, error.headers or None, "application/json")

    async def on_error(request: Request, exc: Exception) -> Response:
        return answer(request, as_api_error(exc, config.retry_after_seconds))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc, BodyTooLarge):
            return answer(request, exc.error)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return answer(
            request, APIError(exc.status_code, str(exc.detail), type=kind, headers=dict(exc.headers or {}))
        )

    app.add_exception_handler(APIError, on_error)
    app.add_exception_handler(GraphrunError, on_error)
    app.add_exception_handler(StarletteHTTPException, on_http)

    def refused(at: str, status: int) -> None:
        if at == path:
            count(outcome_label(status))

    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes, on_refused=refused)
    keys, metrics_key = config.api_keys, config.metrics_require_api_key
    app.add_middleware(APIKeyAuth, api_keys=keys, metrics_require_api_key=metrics_key, on_refused=refused)
