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

import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from graphrun.serve.act.client import ActClient
from graphrun.serve.act.messages import ActResult
from graphrun.serve.config import ServeConfig
from graphrun.serve.infer.codec import encode
from graphrun.serve.infer.tensor_app import (
    build_tensor_app,
    decode_checked,
    health_answer,
    one_event,
    read_json,
)
from graphrun.serve.metrics import CONTENT_TYPE as PROMETHEUS_TEXT
from graphrun.serve.protocol import APIError

ACT_PATH = "/act"
MAX_OBSERVATION_ID_CHARS = 256


def build_act_app(client: ActClient, config: ServeConfig) -> FastAPI:
    """The FastAPI app serving the policy behind `client` under `config.served_model_name`."""
    routes = _ActRoutes(client, config)
    return build_tensor_app(client, config, ACT_PATH, routes.act, routes)


class _ActRoutes:
    def __init__(self, client: ActClient, config: ServeConfig) -> None:
        self._client, self._config = client, config
        self._created = int(time.time())

    async def act(self, request: Request) -> Response:
        """POST /act: an observation in, its action chunk out, in the request's encoding."""
        info, body = await read_json(request, self._client)  # 503 before the policy is ready
        observation_id = _observation_id(body.pop("observation_id", None))
        decoded, rows = decode_checked(body, info.schema, self._config.served_model_name)
        tensors = tuple(
            (s.name, decoded.tensors[s.name]) for s in info.schema.inputs if s.name in decoded.tensors
        )
        handle = self._client.submit_observation(tensors, rows, observation_id)
        result = await one_event(self._client, handle, ActResult)
        self._client.metrics.count("ok")
        outputs = {info.schema.output.name: result.actions}
        answer = {"model": self._config.served_model_name, **encode(decoded.encoding, outputs)}
        return Response(json.dumps(answer), media_type="application/json")

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
        return await health_answer(self._client, self._config)

    async def metrics(self) -> Response:
        """GET /metrics: the pipeline's series (stage tiers, cache, capture failures), its stages' graph
        series, the batcher's, and the server's own."""
        return Response(await self._client.metrics_text(), media_type=PROMETHEUS_TEXT)


def _observation_id(value: object) -> str | None:
    """The request's observation id (None: its prefix is not cached), or the 400 that says why not."""
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_OBSERVATION_ID_CHARS:
        message = f"`observation_id` must be a string of 1 to {MAX_OBSERVATION_ID_CHARS} characters"
        raise APIError(400, message, param="observation_id", code="invalid_body")
    return value
