"""The HTTP front of a served policy: POST /act, GET /v1/models, /health, /metrics.

`build_act_app(client, config)` wires the routes to the engine host's client (model.act_client). A body
is /v1/infer's (infer/codec.py: JSON nested lists, base64 .npy per tensor, or one base64 safetensors
blob) plus an optional `observation_id`: the same id names the same observation, so its prefix comes
from the cache (the tensors sent with a repeated id do not change that prefix). The observation is
decoded and checked here (act/schema.py), so a bad tensor is a 400 naming the tensor and the rule and
never reaches the engine; the action chunk comes back in the encoding the request used. A full queue is
429 and starting or draining 503, both with Retry-After; the engine failing a call is a 500 for that
call's requests. API keys and the body limit are the LLM server's middlewares.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from graphrun.serve.act.client import ActClient
from graphrun.serve.act.messages import ActResult
from graphrun.serve.config import ServeConfig
from graphrun.serve.host.messages import Ended
from graphrun.serve.infer.app import tensor_error
from graphrun.serve.infer.codec import decode, encode
from graphrun.serve.infer.errors import TensorError
from graphrun.serve.infer.guards import add_guards
from graphrun.serve.metrics import CONTENT_TYPE as PROMETHEUS_TEXT
from graphrun.serve.protocol import APIError, check_model_name, content_type_error
from graphrun.version import __version__

ACT_PATH = "/act"
MAX_OBSERVATION_ID_CHARS = 256


def build_act_app(client: ActClient, config: ServeConfig) -> FastAPI:
    """The FastAPI app serving the policy behind `client` under `config.served_model_name`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client.start()
        try:
            yield
        finally:
            await asyncio.to_thread(client.stop)

    app = FastAPI(title="graphrun", version=__version__, lifespan=lifespan)
    routes = _ActRoutes(client, config)
    app.add_api_route(ACT_PATH, routes.act, methods=["POST"], response_class=Response)
    app.add_api_route("/v1/models", routes.models, methods=["GET"], response_class=Response)
    app.add_api_route("/health", routes.health, methods=["GET"], response_class=Response)
    app.add_api_route("/metrics", routes.metrics, methods=["GET"], response_class=Response)
    add_guards(app, ACT_PATH, client.metrics.count, config)
    return app


class _ActRoutes:
    def __init__(self, client: ActClient, config: ServeConfig) -> None:
        self._client, self._config = client, config
        self._created = int(time.time())

    async def act(self, request: Request) -> Response:
        """POST /act: an observation in, its action chunk out, in the request's encoding."""
        not_json = content_type_error(request.headers.get("content-type"))
        if not_json is not None:
            raise not_json
        info = self._client.model  # 503 before the policy is ready
        body = _parse(await request.body())
        observation_id = _observation_id(body.pop("observation_id", None))
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise tensor_error(TensorError("", "invalid_body", "`model` must be a string (the served name)"))
        check_model_name(model, self._config.served_model_name)
        try:
            decoded = decode(body)
            rows = info.schema.validate(decoded.tensors)
        except TensorError as exc:
            raise tensor_error(exc) from None
        tensors = tuple(
            (s.name, decoded.tensors[s.name]) for s in info.schema.inputs if s.name in decoded.tensors
        )
        result = await self._run(tensors, rows, observation_id)
        self._client.metrics.count("ok")
        outputs = {info.schema.output.name: result.actions}
        answer = {"model": self._config.served_model_name, **encode(decoded.encoding, outputs)}
        return Response(json.dumps(answer), media_type="application/json")

    async def _run(
        self, tensors: tuple[tuple[str, np.ndarray], ...], rows: int, observation_id: str | None
    ) -> ActResult:
        """Submit, wait for the one event; a cancelled wait aborts the request."""
        handle = self._client.submit_observation(tensors, rows, observation_id)
        done: asyncio.Future[ActResult | Ended] = asyncio.get_running_loop().create_future()

        def on_event(event: ActResult | Ended) -> None:
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
        assert isinstance(event, ActResult), event
        return event

    async def models(self) -> Response:
        """GET /v1/models: the observation's inputs (optional ones, ranges), the action output, the
        rungs, each stage's tier."""
        info = self._client.model
        card = {
            "id": self._config.served_model_name,
            "object": "model",
            "created": self._created,
            "owned_by": "graphrun",
            "root": info.policy,
            "endpoint": ACT_PATH,
            **info.schema.describe(),
            "observation_id": "optional string: the same id reuses the observation's cached prefix",
            "stages": info.facts["stages"],
            "denoising_steps": info.denoising_steps,
            "max_wait_ms": info.max_wait_ms,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def health(self) -> Response:
        """GET /health: 200 once every stage is captured or has fallen back (each stage's tier in the
        body); 503 before and while draining."""
        state = self._client.state
        body: dict[str, Any] = {"status": "ok" if state == "ready" else state, **self._client.info}
        body["model"] = self._config.served_model_name
        body["memory"] = await self._client.memory()
        graphs = await self._client.graphs()
        if graphs is not None:
            body["graphs"] = graphs
        if state == "ready":
            return JSONResponse(body)
        headers = {"Retry-After": str(self._config.retry_after_seconds)}
        return JSONResponse(body, status_code=503, headers=headers)

    async def metrics(self) -> Response:
        """GET /metrics: the pipeline's series (stage tiers, cache, capture failures), its stages' graph
        series, the batcher's, and the server's own."""
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


def _observation_id(value: object) -> str | None:
    """The request's observation id (None: its prefix is not cached), or the 400 that says why not."""
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_OBSERVATION_ID_CHARS:
        message = f"`observation_id` must be a string of 1 to {MAX_OBSERVATION_ID_CHARS} characters"
        raise APIError(400, message, param="observation_id", code="invalid_body")
    return value
