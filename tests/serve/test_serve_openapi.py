"""The OpenAPI document tells the truth.

schemathesis fuzzes every operation in-process (the ASGI app, the tiny CPU engine) and checks each answer
against /openapi.json: status declared, media type declared, body and headers as the schema says, no 5xx.
Chosen requests reach what fuzzing rarely does (streams, 401, 404, 413); documents edited to lie show
that the same checks fail; and the document's own claims are read directly.
"""

from __future__ import annotations

import asyncio
import copy
import re
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks
from schemathesis.core.failures import FailureGroup
from serve_harness import ENGINE_DEFAULTS
from starlette.types import ASGIApp, Receive, Scope, Send

from graphrun.llm.engine_config import EngineConfig
from graphrun.serve.app import build_app
from graphrun.serve.config import ServeConfig
from graphrun.serve.llm_model import llm_client
from graphrun.serve.metrics import CONTENT_TYPE as PROMETHEUS_TEXT
from graphrun.serve.openapi import ErrorResponse
from graphrun.serve.protocol import APIError

KEY = "openapi-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_REQUEST_BYTES = 64 * 1024
# a schema-valid request may still be refused for its meaning (a prompt longer than the context, n=2):
# the document declares that 400, so "valid by the schema, so it must succeed" does not hold here
NOT_CHECKED = [checks.positive_data_acceptance]
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
GENERATION = ("/v1/completions", "/v1/chat/completions")
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class _EngineStartedOutside:
    """The app with its lifespan answered here: the fixture starts and stops the engine itself (else
    schemathesis would start it and keep it running until the interpreter exits)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


def _config(**overrides: Any) -> ServeConfig:
    return ServeConfig(served_model_name="tiny", engine_process=False, **overrides)


@pytest.fixture(scope="module")
def app():
    config = _config(api_keys=(KEY,), metrics_require_api_key=True, max_request_bytes=MAX_REQUEST_BYTES)
    engine = {**ENGINE_DEFAULTS, "max_model_len": 32, "enforce_eager": True}  # graphs are not the question
    engine_config = EngineConfig(**engine)
    worker = llm_client(engine_config, config)
    worker.start()
    try:
        assert worker.wait_ready(timeout=60), worker.state
        yield _EngineStartedOutside(build_app(worker, config, engine_config))
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def document(app) -> dict[str, Any]:
    return app.app.openapi()


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _lying(app: _EngineStartedOutside, document: dict[str, Any], lie) -> Any:
    doc = copy.deepcopy(document)
    lie(doc)
    schema = schemathesis.openapi.from_dict(doc)
    schema.app = app
    return schema


MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
FUZZED = [
    *((path, "POST", mode) for path in GENERATION for mode in MODES),
    *(("/v1/models", "GET", mode) for mode in MODES),
    *((path, "POST", mode) for path in ("/tokenize", "/detokenize") for mode in MODES),
    *(("/tokenizer_info", "GET", mode) for mode in MODES),
    *(("/metrics", "GET", mode) for mode in MODES),  # negative: a malformed Authorization header
    ("/health", "GET", GenerationMode.POSITIVE),  # it takes no input, so no input is invalid
]


@pytest.mark.parametrize("path,method,mode", FUZZED)
def test_fuzzed_requests_get_the_answers_the_document_declares(api_schema, path, method, mode):
    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    @FUZZ
    def check(case):
        case.call_and_validate(headers=AUTH, excluded_checks=NOT_CHECKED)

    check()


TOO_LARGE = {"prompt": "x" * MAX_REQUEST_BYTES}
CONTINUOUS = {"include_usage": True, "continuous_usage_stats": True}
STREAM = {"prompt": "hi", "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}
CHOSEN = [
    ("/v1/completions", {"prompt": "hi", "max_tokens": 4}, AUTH, 200),
    ("/v1/completions", STREAM, AUTH, 200),
    ("/v1/chat/completions", {**CHAT, "stream": True}, AUTH, 200),
    ("/v1/chat/completions", CHAT, AUTH, 200),
    ("/v1/chat/completions", {**CHAT, "model": "not-served"}, AUTH, 404),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 100}, AUTH, 400),  # past the context of 32
    ("/v1/completions", TOO_LARGE, AUTH, 413),
    ("/v1/completions", {"prompt": "hi"}, {}, 401),
    ("/v1/completions", {"prompt": "hi"}, {"Authorization": "Bearer wrong"}, 401),
    ("/v1/completions", {**STREAM, "stream_options": CONTINUOUS}, AUTH, 200),
    ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": CONTINUOUS}, AUTH, 200),
    ("/tokenize", {"prompt": "hi"}, AUTH, 200),
    ("/tokenize", {"messages": CHAT["messages"]}, AUTH, 200),
    ("/tokenize", {}, AUTH, 400),
    ("/tokenize", {"prompt": "hi", "model": "not-served"}, AUTH, 404),
    ("/tokenize", {"prompt": "hi"}, {}, 401),
    ("/detokenize", {"tokens": [104, 105]}, AUTH, 200),
    ("/detokenize", {"tokens": [10**6]}, AUTH, 400),
    ("/detokenize", {"tokens": [1]}, {}, 401),
]


@pytest.mark.parametrize("path,body,headers,status", CHOSEN)
def test_chosen_requests_get_the_answers_the_document_declares(api_schema, path, body, headers, status):
    case = api_schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call_and_validate(headers=headers, excluded_checks=NOT_CHECKED)
    assert response.status_code == status, response.text
    if body.get("stream") and status == 200:
        assert response.headers["content-type"][0].startswith("text/event-stream")
        assert response.text.rstrip().endswith("data: [DONE]")


READS = [("/metrics", AUTH, 200), ("/metrics", {}, 401), ("/v1/models", {}, 401), ("/health", {}, 200),
         ("/tokenizer_info", AUTH, 200), ("/tokenizer_info", {}, 401)]  # fmt: skip


@pytest.mark.parametrize("path,headers,status", READS)
def test_chosen_reads_get_the_answers_the_document_declares(api_schema, path, headers, status):
    response = api_schema[path]["GET"].Case().call_and_validate(headers=headers, excluded_checks=NOT_CHECKED)
    assert response.status_code == status


def _drop_413(doc):
    del doc["paths"]["/v1/completions"]["post"]["responses"]["413"]


def _metrics_as_json(doc):
    ok = doc["paths"]["/metrics"]["get"]["responses"]["200"]
    ok["content"] = {"application/json": {"schema": {"type": "object"}}}


def _models_need_a_field(doc):
    doc["components"]["schemas"]["ModelList"]["required"].append("next_page")


def _no_event_stream(doc):
    del doc["paths"]["/v1/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]


def _done_renamed(doc):
    event = doc["paths"]["/v1/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    event["schema"]["properties"]["data"]["anyOf"][0]["const"] = "[END]"


def _retry_after_on_401(doc):
    doc["paths"]["/v1/models"]["get"]["responses"]["401"]["headers"]["Retry-After"] = {"required": True}


def _tokenize_needs_a_field(doc):
    doc["components"]["schemas"]["TokenizeResponse"]["required"].append("token_strs")


LIES = [  # (edit, path, method, body, headers, what the checks then say)
    (_drop_413, "/v1/completions", "POST", TOO_LARGE, AUTH, "Undocumented status code"),
    (_metrics_as_json, "/metrics", "GET", None, AUTH, "Undocumented Content-Type"),
    (_models_need_a_field, "/v1/models", "GET", None, AUTH, '"next_page" is a required property'),
    (_no_event_stream, "/v1/completions", "POST", STREAM, AUTH, "Undocumented Content-Type"),
    (_done_renamed, "/v1/completions", "POST", STREAM, AUTH, "SSE event violates schema"),
    (_retry_after_on_401, "/v1/models", "GET", None, {}, "Missing required response headers"),
    (_tokenize_needs_a_field, "/tokenize", "POST", {"prompt": "hi"}, AUTH, '"token_strs" is a required'),
]


@pytest.mark.parametrize("lie,path,method,body,headers,found", LIES, ids=[lie[0].__name__ for lie in LIES])
def test_a_document_that_lies_fails_the_same_checks(app, document, lie, path, method, body, headers, found):
    operation = _lying(app, document, lie)[path][method]
    case = operation.Case(body=body, media_type="application/json") if body else operation.Case()
    with pytest.raises(FailureGroup, match=re.escape(found)):
        case.call_and_validate(headers=headers, excluded_checks=NOT_CHECKED)


def _responses(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    return document["paths"][path][method]["responses"]


def test_errors_are_declared_with_the_openai_body_and_their_headers(document):
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path in GENERATION:
        responses = _responses(document, path, "post")
        for status in ("400", "401", "404", "413", "415", "429", "500", "503"):
            assert responses[status]["content"]["application/json"]["schema"] == error_ref, (path, status)
        assert responses["429"]["headers"]["Retry-After"]["required"] is True
        assert responses["503"]["headers"]["Retry-After"]["required"] is True
        assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert "422" not in str(document["paths"])  # validation errors are 400s
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert set(_responses(document, "/health", "get")) == {"200", "413", "503"}  # no key needed


def test_success_bodies_are_typed_with_their_real_media_types(document):
    ok = _responses(document, "/v1/completions", "post")["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/CompletionResponse"}
    assert "text/event-stream" in ok
    metrics = _responses(document, "/metrics", "get")["200"]["content"]
    assert list(metrics) == [PROMETHEUS_TEXT] == ["text/plain; version=0.0.4; charset=utf-8"]
    models = _responses(document, "/v1/models", "get")["200"]["content"]["application/json"]["schema"]
    assert models == {"$ref": "#/components/schemas/ModelList"}
    choice = document["components"]["schemas"]["CompletionChoice"]
    assert {"text", "finish_reason", "token_ids"} <= set(choice["properties"])  # fields, not a bare dict


def test_the_bearer_scheme_is_declared_only_where_a_key_is_needed(document):
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["paths"]["/v1/models"]["get"]["security"] == [{"bearer": []}]
    assert document["paths"]["/metrics"]["get"]["security"] == [{"bearer": []}]  # closed by the flag
    assert "security" not in document["paths"]["/health"]["get"]


def _document_for(config: ServeConfig) -> dict[str, Any]:
    engine_config = EngineConfig(**ENGINE_DEFAULTS)
    worker = llm_client(engine_config, config)  # never started: the document only
    return build_app(worker, config, engine_config).openapi()


def test_without_keys_no_route_declares_a_401():
    document = _document_for(_config())
    assert "securitySchemes" not in document.get("components", {})
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert "401" not in operation["responses"] and "security" not in operation, path


def test_with_keys_metrics_stays_open_unless_the_flag_closes_it():
    document = _document_for(_config(api_keys=(KEY,)))
    assert "401" not in _responses(document, "/metrics", "get")
    assert "401" in _responses(document, "/v1/chat/completions", "post")


def test_the_error_model_is_the_shape_api_error_writes():
    error = APIError(429, "busy", type="rate_limit_error", code="queue_full")
    assert ErrorResponse.model_validate_json(error.json()).model_dump() == error.body()


def test_a_405_names_the_allowed_methods(app):
    async def wrong_methods() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.put("/v1/completions", headers=AUTH), await client.post("/v1/models")

    completions, models = asyncio.run(wrong_methods())
    assert completions.status_code == 405 and completions.headers["allow"] == "POST"
    assert set(completions.json()["error"]) == {"message", "type", "param", "code"}
    assert models.status_code == 401  # the key is checked before the route: nothing is said to a stranger
