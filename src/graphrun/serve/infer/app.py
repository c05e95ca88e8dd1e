"""The HTTP front of a served tensor model: POST /v1/infer, GET /v1/models, /health, /metrics.

`build_infer_app(client, config)` wires the routes to the engine host's client (model.infer_client).
A request is decoded (codec.py) and checked against the model's schema (schema.py) here, on the HTTP
side, so a bad tensor is a 400 naming the tensor and the rule (`param` the tensor, `code` the rule) and
never reaches the engine; the answer comes back in the encoding the request used. A full queue is 429
and starting or draining 503, both with Retry-After (protocol.as_api_error); the engine failing a call
is a 500 for that call's requests. API keys and the body limit are the LLM server's middlewares.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from graphrun.serve.config import ServeConfig
from graphrun.serve.host.messages import Ended
from graphrun.serve.infer.client import InferClient
from graphrun.serve.infer.codec import decode, encode
from graphrun.serve.infer.errors import TensorError
from graphrun.serve.infer.guards import add_guards
from graphrun.serve.infer.messages import InferResult
from graphrun.serve.metrics import CONTENT_TYPE as PROMETHEUS_TEXT
from graphrun.serve.protocol import APIError, check_model_name, content_type_error
from graphrun.version import __version__

log = logging.getLogger(__name__)
INFER_PATH = "/v1/infer"


def build_infer_app(client: InferClient, config: ServeConfig) -> FastAPI:
    """The FastAPI app serving the tensor model behind `client` under `config.served_model_name`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client.start()
        try:
            yield
        finally:
            await asyncio.to_thread(client.stop)

    app = FastAPI(title="graphrun", version=__version__, lifespan=lifespan)
    routes = _InferRoutes(client, config)
    app.add_api_route(INFER_PATH, routes.infer, methods=["POST"], response_class=Response)
    app.add_api_route("/v1/models", routes.models, methods=["GET"], response_class=Response)
    app.add_api_route("/health", routes.health, methods=["GET"], response_class=Response)
    app.add_api_route("/metrics", routes.metrics, methods=["GET"], response_class=Response)
    add_guards(app, INFER_PATH, client.metrics.count, config)
    return app


def tensor_error(exc: TensorError) -> APIError:
    """The 400 of a bad tensor: the message names it, `param` is it, `code` the rule."""
    return APIError(400, str(exc), param=exc.name or None, code=exc.rule)


class _InferRoutes:
    def __init__(self, client: InferClient, config: ServeConfig) -> None:
        self._client, self._config = client, config
        self._created = int(time.time())

    async def infer(self, request: Request) -> Response:
        """POST /v1/infer: named tensors in, the model's named outputs out, in the request's encoding."""
        not_json = content_type_error(request.headers.get("content-type"))
        if not_json is not None:
            raise not_json
        info = self._client.model  # 503 before the model is ready
        body = _parse(await request.body())
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise tensor_error(TensorError("", "invalid_body", "`model` must be a string (the served name)"))
        check_model_name(model, self._name)
        try:
            decoded = decode(body)
            rows = info.schema.validate(decoded.tensors)
        except TensorError as exc:
            raise tensor_error(exc) from None
        tensors = tuple((spec.name, decoded.tensors[spec.name]) for spec in info.schema.inputs)
        result = await self._run(tensors, rows)
        self._client.metrics.count("ok")
        answer = {"model": self._name, **encode(decoded.encoding, dict(result.outputs))}
        return Response(json.dumps(answer), media_type="application/json")

    @property
    def _name(self) -> str:
        return self._config.served_model_name

    async def _run(self, tensors: tuple[tuple[str, np.ndarray], ...], rows: int) -> InferResult:
        """Submit, wait for the one event; a cancelled wait aborts the request."""
        handle = self._client.submit_tensors(tensors, rows)
        done: asyncio.Future[InferResult | Ended] = asyncio.get_running_loop().create_future()

        def on_event(event: InferResult | Ended) -> None:
            if not done.done():
                done.set_result(event)

        handle.attach(on_event)
        try:
            await handle.admitted
            event = await done
        finally:
            self._client.abort(handle)  # over already: ignored
        if isinstance(event, Exception):
            raise event
        assert isinstance(event, InferResult), event
        return event

    async def models(self) -> Response:
        """GET /v1/models: the served model's inputs and outputs (dtype, shape, dynamic dims), each
        dynamic dim with its rungs (the batch first), the mask input."""
        info = self._client.model
        schema = info.schema
        card = {
            "id": self._name,
            "object": "model",
            "created": self._created,
            "owned_by": "graphrun",
            "root": info.source,
            "graph_backend": info.backend,
            **schema.describe(),
            "rungs": list(schema.rungs),
            "max_rows": schema.max_rows,
            "max_wait_ms": info.max_wait_ms,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def health(self) -> Response:
        """GET /health: 200 once the model is loaded and its graphs captured; 503 before and draining."""
        state = self._client.state
        body: dict[str, Any] = {"status": "ok" if state == "ready" else state, **self._client.info}
        body["model"] = self._name
        body["memory"] = await self._client.memory()
        graphs = await self._client.graphs()
        if graphs is not None:
            body["graphs"] = graphs
        if state == "ready":
            return JSONResponse(body)
        headers = {"Retry-After": str(self._config.retry_after_seconds)}
        return JSONResponse(body, status_code=503, headers=headers)

    async def metrics(self) -> Response:
        """GET /metrics: the batcher's and the runner's series, and the server's own."""
        return Response(await self._client.metrics_text(), media_type=PROMETHEUS_TEXT)


def _parse(raw: bytes) -> dict[str, Any]:
    """The JSON body, or the 400 that says why not."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise APIError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise tensor_error(TensorError("", "invalid_body", "the body must be a JSON object"))
    return body
