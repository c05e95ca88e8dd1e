"""The HTTP front: OpenAI-compatible completions and chat (SSE streaming), models, health, metrics;
the tokenizer's routes (/tokenize, /detokenize, /tokenizer_info) are tokenize.py's.

`build_app(client, config, engine_config)` wires routes to an `LLMClient` (llm_client.py: the engine
host's HTTP side, host/client.py, for an LLM); the app's lifespan starts and stops it.
Every error answer has the OpenAI body {"error": {"message", "type", "param", "code"}}: validation
errors are 400 (not FastAPI's 422), a full queue is 429 and starting or draining is 503 (both with
Retry-After), and an unexpected exception is a 500 for that request only (logged). Once a stream has
sent its headers, a failure becomes a last `data: {"error": ...}` event (sse.py writes the streams).

A client that goes away is noticed by a task per request that watches the ASGI receive channel for
`http.disconnect` (and by the response ending early): its request is aborted at once, which frees its
KV blocks.

Before any route: auth.py answers 401 to a request without a valid API key (when keys are set) and
body_limit.py 413 to a body over the limit; openapi.py makes /openapi.json declare what each route
really answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from graphrun.errors import GraphrunError
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams, SamplingParamsError
from graphrun.llm.scheduler import RequestRejected
from graphrun.serve import openapi
from graphrun.serve.auth import APIKeyAuth
from graphrun.serve.body_limit import BodyLimit, BodyTooLarge
from graphrun.serve.chat_template import ChatTemplate
from graphrun.serve.config import ServeConfig
from graphrun.serve.deltas import Collected
from graphrun.serve.llm_client import LLMClient
from graphrun.serve.llm_handle import LLMHandle
from graphrun.serve.llm_messages import ModelInfo
from graphrun.serve.logprobs import LogprobsShape
from graphrun.serve.metrics import CONTENT_TYPE as PROMETHEUS_TEXT
from graphrun.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    as_api_error,
    check_model_name,
    content_type_error,
)
from graphrun.serve.responses import (
    ChatFormat,
    ChoiceText,
    CompletionFormat,
    EchoedPrompt,
    ModelCard,
    ModelList,
    ResponseFormat,
    best_choices,
)
from graphrun.serve.sse import PromptEcho, SSEResponse, choices_usage
from graphrun.serve.tokenize import TokenizerRoutes
from graphrun.version import __version__

log = logging.getLogger(__name__)

_GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


def build_app(worker: LLMClient, config: ServeConfig, engine_config: EngineConfig) -> FastAPI:
    """The FastAPI app serving the LLM engine behind `worker` under `config.served_model_name`."""
    app = FastAPI(title="graphrun", version=__version__, lifespan=worker.lifespan)
    _add_error_handlers(app, worker, config)
    template = ChatTemplate.for_model(engine_config.model)
    _add_routes(app, _Routes(worker, config, template, engine_config), config)
    TokenizerRoutes(worker, config, template).add_to(app)
    _add_middleware(app, worker, config)
    openapi.install(app, config)
    return app


def _add_routes(app: FastAPI, routes: _Routes, config: ServeConfig) -> None:
    """The endpoints, each with the answers the OpenAPI document declares for it (openapi.py)."""
    for path, endpoint in (("/v1/completions", routes.completions), ("/v1/chat/completions", routes.chat)):
        docs = openapi.generation_responses(path, config)
        app.add_api_route(path, endpoint, methods=["POST"], response_model=None, responses=docs)
    app.add_api_route(
        "/v1/models", routes.models, methods=["GET"], responses=openapi.models_responses(config)
    )
    docs = openapi.health_responses()
    app.add_api_route("/health", routes.health, methods=["GET"], response_model=None, responses=docs)
    docs = openapi.metrics_responses(config)
    app.add_api_route("/metrics", routes.metrics, methods=["GET"], response_class=Response, responses=docs)


def _add_middleware(app: FastAPI, worker: LLMClient, config: ServeConfig) -> None:
    """API keys (outermost: a caller without one costs no body read), then the body limit; refused
    generation requests count in /metrics as the app's own 4xx answers do."""

    def count(path: str, status: int) -> None:
        if path in _GENERATION_PATHS:
            worker.metrics.count(_status_label(status))

    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes, on_refused=count)
    app.add_middleware(
        APIKeyAuth,
        api_keys=config.api_keys,
        metrics_require_api_key=config.metrics_require_api_key,
        on_refused=count,
    )


class _Routes:
    """The endpoints, bound to one engine client."""

    def __init__(
        self, worker: LLMClient, config: ServeConfig, template: ChatTemplate, engine_config: EngineConfig
    ) -> None:
        self._worker, self._config, self._template = worker, config, template
        self._prefix_caching, self._source = engine_config.enable_prefix_caching, engine_config.model
        self._created = int(time.time())

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        """POST /v1/completions."""
        return await self._guarded(self._complete, body, request)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        """POST /v1/chat/completions."""
        return await self._guarded(self._chat, body, request)

    async def _guarded(
        self, handler: Callable[[Any, Request], Awaitable[Response]], body: Any, request: Request
    ) -> Response:
        """Run handler; an unexpected exception becomes a logged 500 for this request alone."""
        try:
            return await handler(body, request)
        except (RequestRejected, SamplingParamsError) as exc:  # the engine's names: this body's instead
            raise body.rejection_error(exc) from exc
        except (APIError, GraphrunError):
            raise  # answered by the error handlers
        except Exception as exc:
            log.exception("request to %s failed", request.url.path)
            raise APIError(500, f"internal error: {type(exc).__name__}", type="server_error") from exc

    async def _complete(self, body: CompletionRequest, request: Request) -> Response:
        model = self._model_for(body.model)
        body.check_supported()
        vocab = model.vocab_size
        prompts = []
        for ids in body.prompts_ids(model.tokenizer, vocab):
            max_tokens = body.resolve_max_tokens(len(ids), model.max_model_len)
            prompts.append((ids, body.sampling_params(max_tokens, vocab)))
        shape = LogprobsShape(model.tokenizer, chat=False) if body.logprobs is not None else None
        fmt = CompletionFormat(self._config.served_model_name, bool(body.return_token_ids), shape)
        return await self._generate(request, fmt, prompts, body.stop_strings(), body)

    async def _chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        model = self._model_for(body.model)
        body.check_supported()
        ids = self._template.prompt_ids(body.messages, model.tokenizer)
        max_tokens = body.resolve_max_tokens(len(ids), model.max_model_len)
        params = body.sampling_params(max_tokens, model.vocab_size)
        shape = LogprobsShape(model.tokenizer, chat=True) if body.logprobs else None
        fmt = ChatFormat(self._config.served_model_name, bool(body.return_token_ids), shape)
        return await self._generate(request, fmt, [(ids, params)], body.stop_strings(), body)

    def _model_for(self, model: str | None) -> ModelInfo:
        """The served model, when `model` names it (None: the served model) and the engine is ready."""
        check_model_name(model, self._config.served_model_name)
        return self._worker.model

    async def _generate(
        self,
        request: Request,
        fmt: ResponseFormat,
        prompts: list[tuple[list[int], SamplingParams]],
        stop: tuple[str, ...],
        body: CompletionRequest | ChatCompletionRequest,
    ) -> Response:
        """Submit n choices of every prompt (prompt i's choice j at index i * n + j), wait for their
        admission, then stream (SSE) or collect the answer."""
        if any(not ids for ids, _ in prompts):
            raise APIError(400, "the prompt is empty; send at least one token", param=body.prompt_param)
        handles = self._submit(prompts, stop, body.num_candidates)
        watcher = asyncio.create_task(_abort_on_disconnect(request, self._worker, handles))
        try:
            results = await asyncio.gather(*(handle.admitted for handle in handles), return_exceptions=True)
            errors = [result for result in results if isinstance(result, BaseException)]
            if errors:  # a group is refused whole: its choices share one reason
                raise errors[0]
        except BaseException:  # rejected, or this handler was cancelled: nothing will read the request
            watcher.cancel()
            for handle in handles:
                self._worker.abort(handle)
            raise
        if body.stream:
            every_batch = bool(body.return_token_ids)
            usage = body.include_usage
            caching = self._prefix_caching
            continuous = body.continuous_usage
            echo = self._prompt_echo(fmt, body)
            return SSEResponse(
                self._worker, handles, fmt, watcher, usage, every_batch, continuous, caching, echo
            )
        try:
            return await self._collect(handles, fmt, body)
        finally:
            watcher.cancel()

    def _prompt_echo(
        self, fmt: ResponseFormat, body: CompletionRequest | ChatCompletionRequest
    ) -> PromptEcho | None:
        """How a stream echoes its prompts (completions' echo), or None."""
        if not body.echoes:
            return None
        assert isinstance(fmt, CompletionFormat)  # only completions echo
        return PromptEcho(fmt, self._worker.model.tokenizer, prompt_only=body.max_tokens == 0)

    def _submit(
        self, prompts: list[tuple[list[int], SamplingParams]], stop: tuple[str, ...], n: int
    ) -> list[LLMHandle]:
        """Every prompt's n choices, in index order; a refusal aborts those already submitted."""
        handles: list[LLMHandle] = []
        try:
            for ids, params in prompts:
                handles += self._worker.submit_choices(ids, params, stop, n)
        except BaseException:
            for handle in handles:
                self._worker.abort(handle)
            raise
        return handles

    async def _collect(
        self,
        handles: list[LLMHandle],
        fmt: ResponseFormat,
        body: CompletionRequest | ChatCompletionRequest,
    ) -> Response:
        collected = [Collected(self._worker.deltas(handle)) for handle in handles]
        for handle, one in zip(handles, collected, strict=True):
            handle.attach(one.on_event)
        try:
            await asyncio.gather(*(one.done for one in collected))
        finally:
            for handle, one in zip(handles, collected, strict=True):
                one.close()
                if handle.finish_reason is None:
                    self._worker.abort(handle)  # cancelled or failed: nothing reads the request now
        aborted = any(handle.finish_reason == "abort" for handle in handles)
        self._worker.metrics.count("aborted" if aborted else "ok")
        choices = [self._choice(handle, one, body) for handle, one in zip(handles, collected, strict=True)]
        usage = choices_usage(handles, self._prefix_caching)
        if body.num_candidates > body.num_choices:
            choices = best_choices(choices, body.num_candidates, body.num_choices)
        answer = fmt.response(choices, usage)
        return Response(answer.model_dump_json(), media_type="application/json")

    def _choice(
        self, handle: LLMHandle, one: Collected, body: CompletionRequest | ChatCompletionRequest
    ) -> ChoiceText:
        """A collected choice; with echo, its prompt first, and with max_tokens 0 nothing else (the one
        token the engine generated is left out, and out of usage)."""
        text, ids, logprobs = "".join(one.texts), one.token_ids, tuple(one.logprobs)
        if not body.echoes:
            return ChoiceText(text, handle.finish_reason, ids, logprobs)
        reason = handle.finish_reason
        if body.max_tokens == 0:
            text, ids, logprobs, reason = "", [], (), "length"
            handle.num_output_tokens = 0
        prompt_text = self._worker.model.tokenizer.decode(handle.prompt_ids)
        echo = EchoedPrompt(prompt_text, handle.prompt_ids, one.prompt_logprobs)
        return ChoiceText(text, reason, ids, logprobs, echo)

    async def models(self) -> ModelList:
        """GET /v1/models: the one served model."""
        card = ModelCard(
            id=self._config.served_model_name,
            created=self._created,
            root=self._source,
            max_model_len=self._worker.info.get("max_model_len"),
        )
        return ModelList(data=[card])

    async def health(self) -> JSONResponse:
        """GET /health: 200 once the engine is built and its graphs captured; 503 before, and draining.

        With --capture background the engine is built before its graphs: 200 comes once the weights are
        loaded, and `graphs` says how far capture has come ("capturing 3/36", then "captured 36/36").

        The body: the engine's start-up facts (describe(), max_model_len, vocab_size, KV-cache bytes) and
        `memory`, read now (memory.py). `model` is the name clients send (as /v1/models lists it);
        `model_source` the preset or folder the engine loaded.
        """
        state = self._worker.state
        status = "ok" if state == "ready" else state
        info = self._worker.info
        body = {"status": status, **info, "model": self._config.served_model_name}
        if "model" in info:
            body["model_source"] = info["model"]
        body["memory"] = await self._worker.memory()
        graphs = await self._worker.graphs()
        if graphs is not None:
            body["graphs"] = graphs
        if state == "ready":
            return JSONResponse(body)
        return JSONResponse(
            body, status_code=503, headers={"Retry-After": str(self._config.retry_after_seconds)}
        )

    async def metrics(self) -> Response:
        """GET /metrics: Prometheus text of the engine's graph series and the server's own."""
        return Response(await self._worker.metrics_text(), media_type=PROMETHEUS_TEXT)


async def _abort_on_disconnect(request: Request, worker: LLMClient, handles: list[LLMHandle]) -> None:
    """Abort the request's choices when the client disconnects (the body was read already: this waits)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for handle in handles:
        worker.abort(handle)


def _status_label(status: int) -> str:
    """The graphrun_requests_total status of an error answer."""
    return {429: "overloaded", 503: "unavailable"}.get(status, "error" if status >= 500 else "invalid")


def _add_error_handlers(app: FastAPI, worker: LLMClient, config: ServeConfig) -> None:
    """OpenAI-shaped bodies for every error; generation requests are counted by outcome."""

    def answer(request: Request, error: APIError) -> Response:
        if request.url.path in _GENERATION_PATHS:
            worker.metrics.count(_status_label(error.status))
        return Response(error.json(), error.status, error.headers or None, "application/json")

    async def on_error(request: Request, exc: Exception) -> Response:
        return answer(request, as_api_error(exc, config.retry_after_seconds))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        not_json = content_type_error(request.headers.get("content-type"))  # the body was never parsed
        return answer(request, not_json or _validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc, BodyTooLarge):  # a body without Content-Length passed the limit as it was read
            return answer(request, exc.error)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        headers = dict(exc.headers or {})  # a 405's Allow
        return answer(request, APIError(exc.status_code, str(exc.detail), type=kind, headers=headers))

    app.add_exception_handler(APIError, on_error)
    app.add_exception_handler(GraphrunError, on_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


def _validation_error(exc: RequestValidationError) -> APIError:
    """A 400 naming the first bad field (the rest are counted), as OpenAI answers."""
    errors = list(exc.errors())
    if not errors:
        return APIError(400, "invalid request body")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {first.get('msg')}", code="invalid_json")
    where = ".".join(loc) or "body"
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return APIError(400, f"{where}: {first.get('msg')}{more}", param=loc[0] if loc else None)
