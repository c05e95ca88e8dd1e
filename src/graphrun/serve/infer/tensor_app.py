"""What every tensor route's app (/v1/infer, /act) does the same way: the app's frame (lifespan, the four
routes, guards.py around them), reading and checking a request's body, waiting for its one event, and
/health.

A route reads its request in a fixed order, which decides which error a request with several faults
gets: the content type (415), the model being ready (503), the JSON (400), then (after whatever the route
reads first, e.g. /act's observation id) `model` and the tensors against the schema (400 naming the
tensor and the rule).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from graphrun.serve.config import ServeConfig
from graphrun.serve.host.client import EngineClient
from graphrun.serve.host.handle import RequestHandle
from graphrun.serve.host.messages import E, Ended, Info
from graphrun.serve.infer.codec import Decoded, decode
from graphrun.serve.infer.errors import TensorError
from graphrun.serve.infer.guards import add_guards
from graphrun.serve.protocol import APIError, check_model_name, content_type_error
from graphrun.version import __version__

Endpoint = Callable[..., Awaitable[Response]]


class TensorRoutes(Protocol):
    """The GET routes of a tensor route's app, bound to its client."""

    async def models(self) -> Response: ...

    async def health(self) -> Response: ...

    async def metrics(self) -> Response: ...


class Validates(Protocol):
    """A served model's schema: the batch rows of valid tensors, or TensorError."""

    def validate(self, tensors: Mapping[str, np.ndarray]) -> int: ...


def build_tensor_app(
    client: EngineClient[Any, Any], config: ServeConfig, path: str, post: Endpoint, routes: TensorRoutes
) -> FastAPI:
    """The app whose lifespan starts and stops `client`: POST `path`, GET /v1/models, /health, /metrics,
    and the guards (answers on `path` counted by outcome)."""
    app = FastAPI(title="graphrun", version=__version__, lifespan=client.lifespan)
    app.add_api_route(path, post, methods=["POST"], response_class=Response)
    app.add_api_route("/v1/models", routes.models, methods=["GET"], response_class=Response)
    app.add_api_route("/health", routes.health, methods=["GET"], response_class=Response)
    app.add_api_route("/metrics", routes.metrics, methods=["GET"], response_class=Response)
    add_guards(app, path, client.metrics.count, config)
    return app


def tensor_error(exc: TensorError) -> APIError:
    """The 400 of a bad tensor: the message names it, `param` is it, `code` the rule."""
    return APIError(400, str(exc), param=exc.name or None, code=exc.rule)


async def read_json(request: Request, client: EngineClient[Info, Any]) -> tuple[Info, dict[str, Any]]:
    """The served model's info and the request's JSON object, or the 415, 503 or 400 that says why not."""
    not_json = content_type_error(request.headers.get("content-type"))
    if not_json is not None:
        raise not_json
    info = client.model  # 503 before the model is ready
    return info, _parse(await request.body())


def decode_checked(body: dict[str, Any], schema: Validates, served_name: str) -> tuple[Decoded, int]:
    """The body's tensors and their batch rows, once `model` names this server and `schema` takes them;
    else the 400 (404 for another model's name) that says why not."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise tensor_error(TensorError("", "invalid_body", "`model` must be a string (the served name)"))
    check_model_name(model, served_name)
    try:
        decoded = decode(body)
        return decoded, schema.validate(decoded.tensors)
    except TensorError as exc:
        raise tensor_error(exc) from None


async def one_event(client: EngineClient[Any, E], handle: RequestHandle[E], kind: type[E]) -> E:
    """The submitted request's one event (an error is raised); a cancelled wait aborts the request."""
    done: asyncio.Future[E | Ended] = asyncio.get_running_loop().create_future()

    def on_event(event: E | Ended) -> None:
        if not done.done():
            done.set_result(event)

    handle.attach(on_event)
    try:
        await handle.admitted
        event = await done
    finally:
        client.abort(handle)  # over already: ignored
    if isinstance(event, Exception):
        raise event
    assert isinstance(event, kind), event
    return event


async def health_answer(client: EngineClient[Any, Any], config: ServeConfig) -> Response:
    """/health's answer: 200 once the model is ready, else 503 with Retry-After; its state, start-up facts,
    name, memory and graph progress in the body."""
    state = client.state
    body: dict[str, Any] = {"status": "ok" if state == "ready" else state, **client.info}
    body["model"] = config.served_model_name
    body["memory"] = await client.memory()
    graphs = await client.graphs()
    if graphs is not None:
        body["graphs"] = graphs
    if state == "ready":
        return JSONResponse(body)
    headers = {"Retry-After": str(config.retry_after_seconds)}
    return JSONResponse(body, status_code=503, headers=headers)


def _parse(raw: bytes) -> dict[str, Any]:
    """The JSON body, or the 400 that says why not."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise APIError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise tensor_error(TensorError("", "invalid_body", "the body must be a JSON object"))
    return body
