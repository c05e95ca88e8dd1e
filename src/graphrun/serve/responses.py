"""OpenAI response bodies: completions and chat, whole or as streamed chunks, and who builds which.

`CompletionFormat` and `ChatFormat` shape one request's answers (the same id on every chunk), so the
serving code streams or collects without knowing which endpoint it serves. With the return_token_ids
extension (vLLM's name) each choice also carries `token_ids`: a chunk's the ids it delivers, a whole
answer's every output id; without it the field is left out, so default answers keep OpenAI's shape.
A request that asks for logprobs gets them on each choice and chunk (serve/logprobs.py); else null.
Completions' echo puts the prompt first: in a whole answer, before each choice's text (and its tokens
first in the logprobs); in a stream, as each choice's first chunk (`prompt_chunk`), as vLLM streams it.

Every stream chunk is serialised one way, `json_text` of its pydantic model's fields: compact, and
ASCII (non-ASCII escaped), so no event carries a character that a client splitting lines too eagerly
(Python's str.splitlines: U+2028, U+0085) would break it at. The chunks a stream writes once (chat's
opening, the usage chunk) go through the models; the one it writes per step is built as text around a
fixed prefix (~10x cheaper on the event loop every stream shares) and is byte for byte the same
(tested). With stream_options.continuous_usage_stats every chunk carries `usage`, the counts so far
(vLLM's extension); without it (the default) a chunk's usage is the constant `null`, no work per step.
An error event's body is `json_text` too (protocol.APIError); sse.py frames every event.

Several choices (n > 1, or several prompts of one completions request) share the response id; a chunk
carries one choice's delta under its `index`, and a whole answer lists every choice in index order.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, field_serializer, model_serializer

from graphrun.llm.logprobs import TokenLogprobs
from graphrun.serve.logprobs import ChatLogprobs, CompletionLogprobs, LogprobsShape


@dataclass(frozen=True, slots=True)
class EchoedPrompt:
    """Completions' echo: the prompt a choice's text starts with, and the logprobs of all its tokens but
    the first (empty unless logprobs were asked for)."""

    text: str
    token_ids: list[int]
    logprobs: tuple[TokenLogprobs, ...] = ()


@dataclass(frozen=True, slots=True)
class ChoiceText:
    """One choice of a whole (non-streamed) answer: its text, finish reason and output ids."""

    text: str
    finish_reason: str | None
    token_ids: list[int]
    logprobs: tuple[TokenLogprobs, ...] = ()  # one per token id, when the request asked for them
    echo: EchoedPrompt | None = None  # completions' echo: the prompt, before the text


def best_choices(choices: list[ChoiceText], per_prompt: int, keep: int) -> list[ChoiceText]:
    """best_of: of each prompt's `per_prompt` candidates (consecutive in `choices`), the `keep` with the
    highest cumulative logprob of their generated tokens, best first (ties: the earlier candidate)."""
    kept: list[ChoiceText] = []
    for start in range(0, len(choices), per_prompt):
        group = choices[start : start + per_prompt]
        ranked = sorted(range(len(group)), key=lambda i: -sum(t.logprob for t in group[i].logprobs))
        kept += [group[i] for i in ranked[:keep]]
    return kept


class PromptTokensDetails(BaseModel):
    """What the prompt's tokens cost: how many the prefix cache already held."""

    cached_tokens: int


class Usage(BaseModel):
    """Token counts of one request; prompt_tokens_details (with prefix caching on) is left out when None."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

    @model_serializer(mode="wrap")
    def _drop_absent_details(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("prompt_tokens_details") is None:
            data.pop("prompt_tokens_details", None)
        return data

    @classmethod
    def of(cls, num_prompt: int, num_completion: int, num_cached: int | None = None) -> Usage:
        """Usage from the counts (num_cached None: no prompt_tokens_details)."""
        details = None if num_cached is None else PromptTokensDetails(cached_tokens=num_cached)
        return cls(
            prompt_tokens=num_prompt,
            completion_tokens=num_completion,
            total_tokens=num_prompt + num_completion,
            prompt_tokens_details=details,
        )

    def json_text(self) -> str:
        """json_text(model_dump()) written directly (streams write one per chunk with continuous usage)."""
        details = self.prompt_tokens_details
        cached = (
            "" if details is None else f',"prompt_tokens_details":{{"cached_tokens":{details.cached_tokens}}}'
        )
        return (
            f'{{"prompt_tokens":{self.prompt_tokens},"completion_tokens":{self.completion_tokens},'
            f'"total_tokens":{self.total_tokens}{cached}}}'
        )


class _TokenIdsChoice(BaseModel):
    """A choice that can carry token ids (return_token_ids); the field is left out when None."""

    token_ids: list[int] | None = None

    @model_serializer(mode="wrap")
    def _drop_absent_token_ids(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        token_ids = data.pop("token_ids", None)
        if token_ids is not None:
            data["token_ids"] = token_ids  # last, where the text-built chunk puts it
        return data


class CompletionChoice(_TokenIdsChoice):
    """A completions choice (also one streamed chunk's choice)."""

    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    """A completions answer, or one chunk of a streamed one (usage None)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatDelta(BaseModel):
    """What a chat chunk adds: the role once, then content."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class AssistantMessage(BaseModel):
    """The reply of a non-streamed chat completion."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_TokenIdsChoice):
    """A non-streamed chat choice."""

    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatChunkChoice(_TokenIdsChoice):
    """A streamed chat choice."""

    index: int = 0
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None

    @field_serializer("delta")
    def _delta(self, delta: ChatDelta) -> dict[str, Any]:
        return delta.model_dump(exclude_none=True)  # as OpenAI: {"content": "..."}, no nulls


class ChatCompletionResponse(BaseModel):
    """A non-streamed chat completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatCompletionChunk(BaseModel):
    """One streamed chat chunk."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


def json_text(value: object) -> str:
    """The one JSON form of what a stream sends: compact, ASCII (non-ASCII and controls escaped)."""
    return json.dumps(value, separators=(",", ":"))


def model_json(model: BaseModel) -> str:
    """json_text of a response model."""
    return json_text(model.model_dump(mode="json"))


def _chunk_json(
    prefix: str,
    text: str,
    close_text: str,
    finish_reason: str | None,
    token_ids: list[int] | None,
    usage: Usage | None,
    logprobs: BaseModel | None = None,
) -> str:
    """A stream chunk's JSON: the fixed prefix up to the text, the text, then the choice's other fields."""
    ids = "" if token_ids is None else f',"token_ids":{json_text(token_ids)}'
    counts = "null" if usage is None else usage.json_text()
    values = "null" if logprobs is None else model_json(logprobs)
    tail = f',"logprobs":{values},"finish_reason":{json_text(finish_reason)}{ids}}}],"usage":{counts}}}'
    return prefix + json_text(text) + close_text + tail


def new_id(prefix: str) -> str:
    """A response id such as cmpl-3f2a...; unique per request."""
    return f"{prefix}-{uuid.uuid4().hex}"


class ModelCard(BaseModel):
    """One entry of GET /v1/models: the served model (root: what it was loaded from)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "graphrun"
    root: str
    max_model_len: int | None  # None until the engine has started


class ModelList(BaseModel):
    """GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ResponseFormat(Protocol):
    """How one endpoint shapes its answers (completions or chat)."""

    id: str  # the response id, the same on every chunk

    def opening(self, usage: Usage | None = None, index: int = 0) -> list[str]:
        """The JSON of the chunks a stream starts with for choice `index` (chat: the assistant role);
        usage: the counts so far (continuous usage stats), else null."""
        ...

    def chunk(
        self,
        text: str,
        finish_reason: str | None,
        token_ids: list[int],
        usage: Usage | None = None,
        index: int = 0,
        logprobs: Sequence[TokenLogprobs] = (),
    ) -> str:
        """One streamed piece of text and the ids it came from, as JSON; the last one has the finish reason.
        usage: the counts so far (continuous usage stats), else null; logprobs: one per token id (when
        the request asked for them, else empty).

        Built as text around a fixed prefix, not through pydantic: a server writes one per stream per
        step (thousands a second) on the event loop, and this is ~10x cheaper. It is byte for byte
        `model_json(chunk_model(...))` (tested).
        """
        ...

    def chunk_model(
        self,
        text: str,
        finish_reason: str | None,
        token_ids: list[int],
        usage: Usage | None = None,
        index: int = 0,
        logprobs: Sequence[TokenLogprobs] = (),
    ) -> BaseModel:
        """The same chunk as a pydantic model (the schema `chunk` follows)."""
        ...

    def usage_chunk(self, usage: Usage) -> str:
        """The JSON of the chunk with token counts that stream_options.include_usage asks for."""
        ...

    def response(self, choices: list[ChoiceText], usage: Usage) -> BaseModel:
        """The whole answer of a non-streamed request: choice i at index i."""
        ...


class _Format:
    """What both endpoints' formats share: the response id, the created time, the text-built chunk."""

    id_prefix = ""  # cmpl, chatcmpl
    chunk_object = ""  # the streamed chunks' "object"
    text_opening = ""  # the JSON of a chunk's choice up to its text
    text_closing = ""  # what closes the text's object, if any

    def __init__(
        self, model: str, return_token_ids: bool = False, logprobs: LogprobsShape | None = None
    ) -> None:
        self.id, self.model, self.return_token_ids = new_id(self.id_prefix), model, return_token_ids
        self._logprobs = logprobs  # None: the request asked for no logprobs (the field is null)
        self.created = int(time.time())  # one value for every chunk of the stream, as OpenAI sends
        head = {"id": self.id, "object": self.chunk_object, "created": self.created, "model": model}
        self._head = json_text(head)[:-1] + ',"choices":[{"index":'
        self._prefixes: dict[int, str] = {}  # per choice index: the chunk's text up to the text

    def chunk(
        self,
        text: str,
        finish_reason: str | None,
        token_ids: list[int],
        usage: Usage | None = None,
        index: int = 0,
        logprobs: Sequence[TokenLogprobs] = (),
    ) -> str:
        prefix = self._prefixes.get(index)
        if prefix is None:
            prefix = self._prefixes[index] = f"{self._head}{index},{self.text_opening}"
        ids = self._ids(token_ids)
        values = self._values(token_ids, logprobs, index)
        return _chunk_json(prefix, text, self.text_closing, finish_reason, ids, usage, values)

    def _ids(self, token_ids: list[int]) -> list[int] | None:
        return token_ids if self.return_token_ids else None

    def _values(self, token_ids: list[int], logprobs: Sequence[TokenLogprobs], index: int) -> Any:
        """The choice's logprobs model for these tokens (None: the request asked for none)."""
        if self._logprobs is None:
            return None
        return self._logprobs.build(token_ids, logprobs, index)


class CompletionFormat(_Format):
    """/v1/completions answers: text_completion objects."""

    id_prefix, chunk_object, text_opening = "cmpl", "text_completion", '"text":'

    def opening(self, usage: Usage | None = None, index: int = 0) -> list[str]:
        return []

    def chunk_model(
        self,
        text: str,
        finish_reason: str | None,
        token_ids: list[int],
        usage: Usage | None = None,
        index: int = 0,
        logprobs: Sequence[TokenLogprobs] = (),
    ) -> BaseModel:
        values = self._values(token_ids, logprobs, index)
        choice = CompletionChoice(
            index=index,
            text=text,
            logprobs=values,
            finish_reason=finish_reason,
            token_ids=self._ids(token_ids),
        )
        return CompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage
        )

    def prompt_chunk(
        self, echo: EchoedPrompt, finish_reason: str | None, usage: Usage | None = None, index: int = 0
    ) -> str:
        """The JSON of a streamed choice's first chunk with echo: its prompt, and the prompt's logprobs when
        the request asked for logprobs (the first token's null); finish_reason "length" when the prompt is
        all the answer (max_tokens 0). Written once per choice, so through the models."""
        values: Any = None  # CompletionLogprobs (LogprobsShape builds either shape)
        if self._logprobs is not None:
            values = self._logprobs.build([], [], index, (echo.token_ids, echo.logprobs))
        choice = CompletionChoice(
            index=index, text=echo.text, logprobs=values, finish_reason=finish_reason, token_ids=self._ids([])
        )
        chunk = CompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage
        )
        return model_json(chunk)

    def _echoed_values(self, choice: ChoiceText, index: int) -> Any:
        """A whole answer's logprobs, the echoed prompt's first (None: no logprobs were asked for)."""
        if self._logprobs is None or choice.echo is None:
            return self._values(choice.token_ids, choice.logprobs, index)
        prompt = (choice.echo.token_ids, choice.echo.logprobs)
        return self._logprobs.build(choice.token_ids, choice.logprobs, index, prompt)

    def usage_chunk(self, usage: Usage) -> str:
        chunk = CompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=[], usage=usage
        )
        return model_json(chunk)

    def response(self, choices: list[ChoiceText], usage: Usage) -> BaseModel:
        items = [
            CompletionChoice(
                index=i,
                text=c.text if c.echo is None else c.echo.text + c.text,
                logprobs=self._echoed_values(c, i),
                finish_reason=c.finish_reason,
                token_ids=self._ids(c.token_ids),
            )
            for i, c in enumerate(choices)
        ]  # the chunks' text_completion object, every choice in it
        return CompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=items, usage=usage
        )


class ChatFormat(_Format):
    """/v1/chat/completions answers: chat.completion and chat.completion.chunk objects."""

    id_prefix, chunk_object = "chatcmpl", "chat.completion.chunk"
    text_opening, text_closing = '"delta":{"content":', "}"

    def opening(self, usage: Usage | None = None, index: int = 0) -> list[str]:
        delta = ChatDelta(role="assistant", content="")
        choice = ChatChunkChoice(index=index, delta=delta, token_ids=self._ids([]))
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage
        )
        return [model_json(chunk)]

    def chunk_model(
        self,
        text: str,
        finish_reason: str | None,
        token_ids: list[int],
        usage: Usage | None = None,
        index: int = 0,
        logprobs: Sequence[TokenLogprobs] = (),
    ) -> BaseModel:
        delta = ChatDelta(content=text)
        ids = self._ids(token_ids)
        values = self._values(token_ids, logprobs, index)
        choice = ChatChunkChoice(
            index=index, delta=delta, logprobs=values, finish_reason=finish_reason, token_ids=ids
        )
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[choice], usage=usage
        )

    def usage_chunk(self, usage: Usage) -> str:
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[], usage=usage
        )
        return model_json(chunk)

    def response(self, choices: list[ChoiceText], usage: Usage) -> BaseModel:
        items = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=c.text),
                logprobs=self._values(c.token_ids, c.logprobs, i),
                finish_reason=c.finish_reason,
                token_ids=self._ids(c.token_ids),
            )
            for i, c in enumerate(choices)
        ]
        return ChatCompletionResponse(
            id=self.id, created=self.created, model=self.model, choices=items, usage=usage
        )
