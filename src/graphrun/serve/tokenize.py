"""The tokenizer over HTTP, as vLLM serves it: POST /tokenize, POST /detokenize, GET /tokenizer_info.

Clients count a prompt's tokens before they send it, and lm-eval's remote tokenizer encodes, decodes
and reads the chat template through these routes. They sit at the root, not under /v1 (as in vLLM), and
behind the API key like every route but /health (auth.py).

/tokenize takes a completions-style body (`prompt`, a string) or a chat-style one (`messages`, rendered
with the server's chat template, `add_generation_prompt` true by default) and answers `tokens`, `count`
and `max_model_len`. `add_special_tokens`: for a prompt, true by default (what /v1/completions feeds the
model: the tokenizer's own BOS and the like); for messages, unset means the ids /v1/chat/completions
feeds the model, true the tokenizer's tokens added to the rendered text, false none. False leaves out
the tokens encode adds around any text (tokenizer_info.SpecialAffixes).

/detokenize takes `tokens` (ids in the model's vocabulary, as a prompt's must be) and answers `prompt`,
the text generation would show for them (special tokens left out, as the tokenizer's decode does).
/tokenizer_info: tokenizer_info.py says what it answers and why.

Not supported, each a 400 naming the field: return_token_strs (graphrun's tokenizers expose no token
strings), continue_final_message, a request's own chat_template or chat_template_kwargs, tools.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from graphrun.errors import GraphrunError
from graphrun.llm.tokenizer import Tokenizer
from graphrun.serve import openapi
from graphrun.serve.chat_template import ChatTemplate
from graphrun.serve.config import ServeConfig
from graphrun.serve.llm_client import LLMClient
from graphrun.serve.llm_messages import ModelInfo
from graphrun.serve.protocol import APIError, ChatMessage, check_model_name, encode_text, unsupported
from graphrun.serve.tokenizer_info import SpecialAffixes, TokenizerInfo, tokenizer_info

log = logging.getLogger(__name__)

_REQUEST = ConfigDict(strict=True, extra="ignore")
T = TypeVar("T")


class TokenizeRequest(BaseModel):
    """POST /tokenize: exactly one of `prompt` (text) and `messages` (a chat)."""

    model_config = _REQUEST
    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    return_token_strs: bool | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Any] | None = None

    def check_supported(self) -> None:
        """A 400 for a missing prompt, both prompt and messages, or a field graphrun does not implement."""
        if (self.prompt is None) == (self.messages is None):
            both = "both" if self.prompt is not None else "neither"
            raise APIError(400, f"send either prompt or messages (got {both})", param="prompt")
        if self.return_token_strs:
            raise unsupported("return_token_strs", "returning token strings")
        if self.continue_final_message:
            raise unsupported("continue_final_message", "continuing the final message")
        if self.chat_template is not None:
            raise unsupported("chat_template", "a request's own chat template")
        if self.chat_template_kwargs:
            raise unsupported("chat_template_kwargs", "chat template arguments")
        if self.tools:
            raise unsupported("tools", "tool definitions")


class TokenizeResponse(BaseModel):
    """The /tokenize answer."""

    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(BaseModel):
    """POST /detokenize."""

    model_config = _REQUEST
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


class DetokenizeResponse(BaseModel):
    """The /detokenize answer."""

    prompt: str


class TokenizerRoutes:
    """The three routes, bound to one engine client and its chat template."""

    def __init__(self, worker: LLMClient, config: ServeConfig, template: ChatTemplate) -> None:
        self._worker, self._config, self._template = worker, config, template
        self._affixes: SpecialAffixes | None = None  # found on first use (the tokenizer is ready then)
        self._info: TokenizerInfo | None = None

    def add_to(self, app: FastAPI) -> None:
        """Register the routes with the answers openapi.py declares for them."""
        routes = (
            ("/tokenize", self.tokenize, "POST", TokenizeResponse),
            ("/detokenize", self.detokenize, "POST", DetokenizeResponse),
            ("/tokenizer_info", self.info, "GET", TokenizerInfo),
        )
        for path, endpoint, method, body in routes:
            docs = openapi.tokenizer_responses(path, body, self._config)
            app.add_api_route(path, endpoint, methods=[method], response_model=None, responses=docs)

    async def tokenize(self, body: TokenizeRequest) -> TokenizeResponse:
        """POST /tokenize."""
        model = self._model_for(body.model)
        body.check_supported()
        ids = _guarded(lambda: self._ids(body, model.tokenizer))
        return TokenizeResponse(count=len(ids), max_model_len=model.max_model_len, tokens=ids)

    async def detokenize(self, body: DetokenizeRequest) -> DetokenizeResponse:
        """POST /detokenize."""
        model = self._model_for(body.model)
        bad = [i for i in body.tokens if i >= model.vocab_size]
        if bad:
            message = f"tokens must be ids in [0, {model.vocab_size}), got {bad[:5]}"
            raise APIError(400, message, param="tokens", code="invalid_token_id")
        return DetokenizeResponse(prompt=_guarded(lambda: model.tokenizer.decode(body.tokens)))

    async def info(self) -> TokenizerInfo:
        """GET /tokenizer_info."""
        model = self._worker.model
        if self._info is None:
            source = model.source
            self._info = _guarded(
                lambda: tokenizer_info(
                    source, model.tokenizer, self._template, model.max_model_len, model.vocab_size
                )
            )
        return self._info

    def _ids(self, body: TokenizeRequest, tokenizer: Tokenizer) -> list[int]:
        """The token ids of the body's prompt or messages (the module docstring says which)."""
        if body.messages is None:
            assert body.prompt is not None  # check_supported: one of the two
            ids = encode_text(tokenizer, body.prompt, "prompt")
            return ids if body.add_special_tokens is not False else self._strip(ids, tokenizer)
        generation = body.add_generation_prompt is not False
        if body.add_special_tokens is None:
            return self._template.prompt_ids(body.messages, tokenizer, generation)
        ids = encode_text(tokenizer, self._template.render(body.messages, generation), "messages")
        return ids if body.add_special_tokens else self._strip(ids, tokenizer)

    def _strip(self, ids: list[int], tokenizer: Tokenizer) -> list[int]:
        if self._affixes is None:
            self._affixes = SpecialAffixes.of(tokenizer)
        return self._affixes.strip(ids)

    def _model_for(self, model: str | None) -> ModelInfo:
        """The served model, when `model` names it (None: the served model) and the engine is ready."""
        check_model_name(model, self._config.served_model_name)
        return self._worker.model


def _guarded(work: Callable[[], T]) -> T:
    """Run work; an unexpected exception becomes a logged 500 in the OpenAI shape (not a bare text one)."""
    try:
        return work()
    except (APIError, GraphrunError):
        raise  # answered by the app's error handlers
    except Exception as exc:
        log.exception("tokenizer request failed")
        raise APIError(500, f"internal error: {type(exc).__name__}", type="server_error") from exc
