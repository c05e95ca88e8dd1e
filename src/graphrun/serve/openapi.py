"""What the OpenAPI document (/openapi.json, /docs) says each route answers, so that it tells the truth.

FastAPI documents a route from its signature: a JSON 200, and a 422 for any route with a body. graphrun
answers otherwise: a validation error is a 400 in the OpenAI error shape (never a 422), a stream is
`text/event-stream`, /metrics is Prometheus text, and middlewares answer 401 (auth.py) and 413
(body_limit.py) before any route runs. The `*_responses` functions declare each route's statuses,
bodies, media types and headers (Retry-After, WWW-Authenticate). `install` drops FastAPI's 422, adds the
bearer scheme to the routes that need a key, and adds the schemas pydantic cannot see through.

A stream is declared event by event (in OpenAPI 3.1 a text/event-stream `schema` describes one event):
its `data` is `[DONE]` or JSON (contentMediaType) holding a chunk or an error body. A choice leaves
`token_ids` out when unset through a wrap serializer, which hides its fields from pydantic's
serialization schema; the document shows its validation schema, which the wire form satisfies.
A schema-driven fuzzer checks every answer, stream events included, against the document
(tests/serve/test_serve_openapi.py).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict

from graphrun.serve.auth import requires_key
from graphrun.serve.config import ServeConfig
from graphrun.serve.metrics import CONTENT_TYPE as PROMETHEUS_TEXT
from graphrun.serve.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionResponse,
)

Responses = dict[int | str, dict[str, Any]]

_ERRORS = {
    400: "Invalid request: a bad field (named in `param`), an unsupported parameter, a prompt too long",
    401: "No API key, or not one of the server's (only when the server requires keys)",
    404: "The `model` is not the one this server serves",
    413: "The request body is larger than --max-request-bytes",
    415: "The body is not sent as application/json",
    429: "The queue is full; retry after Retry-After seconds",
    500: "Internal error (the engine failed); logged by the server",
    503: "Starting (graphs being captured) or draining; retry after Retry-After seconds",
}
_INTEGER_SECONDS = {"schema": {"type": "integer", "minimum": 1}}
_HEADERS = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    429: {"Retry-After": {"required": True, **_INTEGER_SECONDS}},
    503: {"Retry-After": {"required": True, **_INTEGER_SECONDS}},
}
_COMPONENTS = "#/components/schemas/"
_STREAMED = "With stream=true: `data: {chunk}` events, then `data: [DONE]`; a failure once the stream has "
_STREAMED += 'begun is a last `data: {"error": ...}` event'
_CHOICES = (CompletionChoice, ChatChoice, ChatChunkChoice)  # documented by their validation schema
_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")  # only FastAPI's 422 refers to them


class ErrorDetail(BaseModel):
    """The inside of an OpenAI error body."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error answer's body: {"error": {"message", "type", "param", "code"}} (protocol.APIError)."""

    error: ErrorDetail


class HealthResponse(BaseModel):
    """GET /health: the state, the served model, memory now, and (once started) the engine's start-up
    facts: describe(), max_model_len, vocab_size, kv_cache_bytes."""

    model_config = ConfigDict(extra="allow")
    status: Literal["ok", "starting", "draining", "stopping", "stopped", "failed"]
    model: str
    memory: dict[str, float | None]


def errors(*statuses: int) -> Responses:
    """The error answers `statuses`, each with the OpenAI error body and its headers."""
    return {
        status: {"model": ErrorResponse, "description": _ERRORS[status], **_headers(status)}
        for status in statuses
    }


def generation_responses(path: str, config: ServeConfig) -> Responses:
    """POST /v1/completions and /v1/chat/completions: the answer as JSON or as an event stream."""
    body, chunk = (
        (CompletionResponse, CompletionResponse)
        if path == "/v1/completions"
        else (ChatCompletionResponse, ChatCompletionChunk)
    )
    stream = {"text/event-stream": {"schema": _event(chunk), "description": _STREAMED}}
    ok = {"model": body, "description": "The answer (JSON), or its chunks (stream=true)", "content": stream}
    return {200: ok, **errors(400, *_auth(config, path), 404, 413, 415, 429, 500, 503)}


def models_responses(config: ServeConfig) -> Responses:
    """GET /v1/models (its 200 body is the route's response_model)."""
    return errors(*_auth(config, "/v1/models"), 413)


def tokenizer_responses(path: str, body: type[BaseModel], config: ServeConfig) -> Responses:
    """/tokenize and /detokenize (POST), /tokenizer_info (GET): `body` as JSON, or an error."""
    ok = {"model": body, "description": (body.__doc__ or body.__name__).strip().splitlines()[0]}
    auth = _auth(config, path)
    if path == "/tokenizer_info":  # no body to be wrong, no model to name
        return {200: ok, **errors(*auth, 413, 500, 503)}
    return {200: ok, **errors(400, *auth, 404, 413, 415, 500, 503)}


def health_responses() -> Responses:
    """GET /health: the same body at 200 (ready) and 503 (not ready)."""
    ready = {"model": HealthResponse, "description": "Ready: the engine started and its graphs are captured"}
    waiting = {"model": HealthResponse, "description": "Starting, draining or failed", **_headers(503)}
    return {200: ready, 503: waiting, **errors(413)}


def metrics_responses(config: ServeConfig) -> Responses:
    """GET /metrics: Prometheus text."""
    text = {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}, "description": "Prometheus text"}
    return {200: text, **errors(*_auth(config, "/metrics"), 413)}


def install(app: FastAPI, config: ServeConfig) -> None:
    """Make app.openapi() build the document once, without FastAPI's 422 and with the bearer scheme."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = _truthful(document, config)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _truthful(document: dict[str, Any], config: ServeConfig) -> dict[str, Any]:
    for path, operations in document["paths"].items():
        for operation in operations.values():
            operation["responses"].pop("422", None)  # validation errors are 400s
            if requires_key(config, path):
                operation["security"] = [{"bearer": []}]
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in _VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    _add_schemas(schemas, ChatCompletionChunk, "serialization", replace=False)  # only the stream names it
    for choice in _CHOICES:
        _add_schemas(schemas, choice, "validation", replace=True)
    if config.api_keys:
        scheme = {"type": "http", "scheme": "bearer", "description": "--api-key or GRAPHRUN_API_KEY"}
        document.setdefault("components", {})["securitySchemes"] = {"bearer": scheme}
    return document


def _event(chunk: type[BaseModel]) -> dict[str, Any]:
    """One event of a stream of `chunk`s, as schemathesis reads an event: {"data": ..., "event": ...}."""
    json_data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [_ref(chunk), _ref(ErrorResponse)]},
    }
    data = {"anyOf": [{"const": "[DONE]"}, json_data]}
    return {"type": "object", "required": ["data"], "properties": {"data": data}}


def _add_schemas(
    schemas: dict[str, Any],
    model: type[BaseModel],
    mode: Literal["validation", "serialization"],
    replace: bool,
) -> None:
    """Put model's JSON schema (and the schemas it refers to) into the document's components."""
    schema = model.model_json_schema(mode=mode, ref_template=_COMPONENTS + "{model}")
    for name, sub in {**schema.pop("$defs", {}), model.__name__: schema}.items():
        if replace and name == model.__name__:
            schemas[name] = sub
        else:
            schemas.setdefault(name, sub)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _COMPONENTS + model.__name__}


def _auth(config: ServeConfig, path: str) -> tuple[int, ...]:
    return (401,) if requires_key(config, path) else ()


def _headers(status: int) -> dict[str, Any]:
    return {"headers": _HEADERS[status]} if status in _HEADERS else {}
