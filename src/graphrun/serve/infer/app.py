"""The HTTP front of a served tensor model: POST /v1/infer, GET /v1/models, /health, /metrics.

`build_infer_app(client, config)` wires the routes to the engine host's client (model.infer_client).
A request is decoded (codec.py) and checked against the model's schema (schema.py) here, on the HTTP
side, so a bad tensor is a 400 naming the tensor and the rule (`param` the tensor, `code` the rule) and
never reaches the engine; the answer comes back in the encoding the request used. A full queue is 429
and starting or draining 503, both with Retry-After (protocol.as_api_error); the engine failing a call
is a 500 for that call's requests. API keys and the body limit are the LLM server's middlewares. The
app's frame, the body's reading and checks, the wait for the result and /health are tensor_app.py's,
shared with /act.
"""

from __future__ import annotations

import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from graphrun.serve.config import ServeConfig
from graphrun.serve.infer.client import InferClient
from graphrun.serve.infer.codec import encode
from graphrun.serve.infer.messages import InferResult
from graphrun.serve.infer.tensor_app import (
    build_tensor_app,
    decode_checked,
    health_answer,
    one_event,
    read_json,
)
from graphrun.serve.metrics import CONTENT_TYPE as PROMETHEUS_TEXT

log = logging.getLogger(__name__)
INFER_PATH = "/v1/infer"


def build_infer_app(client: InferClient, config: ServeConfig) -> FastAPI:
    """The FastAPI app serving the tensor model behind `client` under `config.served_model_name`."""
    routes = _InferRoutes(client, config)
    return build_tensor_app(client, config, INFER_PATH, routes.infer, routes)


class _InferRoutes:
    def __init__(self, client: InferClient, config: ServeConfig) -> None:
        self._client, self._config = client, config
        self._created = int(time.time())

    async def infer(self, request: Request) -> Response:
        """POST /v1/infer: named tensors in, the model's named outputs out, in the request's encoding."""
        info, body = await read_json(request, self._client)  # 503 before the model is ready
        decoded, rows = decode_checked(body, info.schema, self._name)
        tensors = tuple((spec.name, decoded.tensors[spec.name]) for spec in info.schema.inputs)
        result = await one_event(self._client, self._client.submit_tensors(tensors, rows), InferResult)
        self._client.metrics.count("ok")
        answer = {"model": self._name, **encode(decoded.encoding, dict(result.outputs))}
        return Response(json.dumps(answer), media_type="application/json")

    @property
    def _name(self) -> str:
        return self._config.served_model_name

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
        return await health_answer(self._client, self._config)

    async def metrics(self) -> Response:
        """GET /metrics: the batcher's and the runner's series, and the server's own."""
        return Response(await self._client.metrics_text(), media_type=PROMETHEUS_TEXT)
