"""OpenAI requests: the bodies of /v1/completions and /v1/chat/completions, and the error answer.

Pydantic lives at the HTTP boundary only. Requests validate strictly (a string is not a number, NaN is
not a temperature) and become token ids plus a `SamplingParams`. What graphrun does not implement is a
400 that names the parameter, never silently ignored: best_of below n, suffix, penalties,
logit_bias, tools. Structured output (response_format json_object/json_schema, guided_json,
guided_regex, guided_choice, guided_grammar) becomes SamplingParams' grammar (llm/grammar.py).
Logprobs (completions' logprobs, chat's logprobs and top_logprobs, up to 20 alternatives) become
SamplingParams.logprobs. Completions' echo (streamed or not, with any n) starts each choice with its
prompt; with logprobs it also asks for the prompt's (SamplingParams.prompt_logprobs), and max_tokens 0
is allowed with it (the prompt alone). Unknown fields are ignored,
as OpenAI-compatible servers do, so newer clients keep working.

Choices: `n` (1..MAX_CHOICES) choices of a prompt share one prefill in the engine (llm/choices.py);
choice j samples with seed + j when a seed is given. Completions also take several prompts (a list of
strings or of token lists): prompt i's choice j has index i * n + j. best_of equal to n is the same
request; best_of > n (completions, not streamed: a stream cannot rank what it has already sent) samples
best_of candidates of each prompt, sharing its prefill like n does, and answers with the n of highest
cumulative log probability of their generated tokens (the logprob OpenAI reports: before temperature),
best first; usage counts every candidate's tokens, as OpenAI bills them.

Extensions, named as in vLLM: top_k (0 or -1: off), ignore_eos, stop_token_ids, return_token_ids (each
choice carries the output's token ids; a stream sends a chunk for every batch of tokens the engine
delivers, even one whose text is held back, so chunks count tokens), stream_options.continuous_usage_stats
(with include_usage, every chunk carries the token counts so far). Stop strings are
matched on the decoded text (the engine stops on token ids only): the text is cut before the stop
string and finish_reason is "stop". Chat messages become prompt text in chat_template.py; response
bodies are in responses.py.

Structured output (structured.py), on completions and chat alike: OpenAI's response_format (json_object,
json_schema) or vLLM's guided_json, guided_regex, guided_choice and guided_grammar (Lark or GBNF), one
of them per request; a constraint that does not compile is a 400 naming the field it came in.

An error's `param` is the field the client sent: a prompt too long for the context (or the KV cache) is
`prompt` (chat: `messages`), too many tokens asked for is `max_tokens` (or `max_completion_tokens`); the
engine names the value it rejects and the request body translates it. A body not declared JSON is a
415 that says which header to send (the server never parses it).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from graphrun.llm.sampling_params import SamplingParams, SamplingParamsError
from graphrun.llm.scheduler import RequestRejected
from graphrun.llm.structured_output import StructuredOutput
from graphrun.llm.tokenizer import Tokenizer
from graphrun.serve.host.messages import EngineFailure, QueueFull, Unavailable
from graphrun.serve.responses import json_text
from graphrun.serve.structured import STRUCTURED_FIELDS, check_constraint, requested_constraint

MAX_STOP_STRINGS = 16
MAX_CHOICES = 16  # n: choices per prompt
MAX_PROMPTS = 64  # prompts in one completions request
_REQUEST = ConfigDict(strict=True, extra="ignore")
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(ge=1)]


class APIError(Exception):
    """An error answer: HTTP status, OpenAI error body fields, extra headers (Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The OpenAI error body: {"error": {"message", "type", "param", "code"}}."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json(self) -> str:
        """The body as JSON text (json_text: as a stream's chunks are, so also its last event). Non-ASCII
        is escaped, so a message quoting a lone surrogate from the request still encodes."""
        return json_text(self.body())


def as_api_error(exc: Exception, retry_after: int = 1) -> APIError:
    """The HTTP answer for an exception raised while serving a request."""
    retry = {"Retry-After": str(retry_after)}
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFull):
        return APIError(429, str(exc), type="rate_limit_error", code="queue_full", headers=retry)
    if isinstance(exc, Unavailable):
        return APIError(503, str(exc), type="service_unavailable", code=exc.reason, headers=retry)
    if isinstance(exc, RequestRejected):  # the engine's names; a request body's own: rejection_error()
        code = "context_length_exceeded" if exc.code == "too_long" else exc.code
        return APIError(400, str(exc), code=code, param=exc.param)
    if isinstance(exc, SamplingParamsError):
        return APIError(400, str(exc), param=exc.param)
    if isinstance(exc, EngineFailure) or not isinstance(exc, ValueError):
        return APIError(500, str(exc), type="server_error")
    return APIError(400, str(exc))  # ConfigError: the request's values


def content_type_error(content_type: str | None) -> APIError | None:
    """The 415 for a body not declared JSON (the server does not parse it then); None for JSON."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return None
    got = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
    return APIError(
        415,
        f"the request body must be JSON sent with the header Content-Type: application/json (got {got}); "
        "e.g. curl -H 'Content-Type: application/json' -d '{\"prompt\": \"...\"}'",
        code="unsupported_media_type",
    )


def unsupported(param: str, what: str) -> APIError:
    """A 400 for a parameter graphrun does not implement."""
    return APIError(400, f"{param}: {what} is not supported by graphrun", param=param, code="unsupported")


# ----- requests ---------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    """stream_options: include_usage adds a last chunk with the token counts; continuous_usage_stats
    (vLLM's, with include_usage) also puts the counts so far on every chunk."""

    model_config = _REQUEST
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class _GenerationRequest(BaseModel):
    """Fields completions and chat share: model, sampling, stopping, streaming.

    Errors name the field the client sent: a prompt that is too long is `prompt` (chat: `messages`),
    too many tokens asked for is `max_tokens` (or `max_completion_tokens`, when that was sent).
    """

    model_config = _REQUEST
    prompt_param: ClassVar[str] = "prompt"  # the field the prompt comes from
    default_max_tokens: ClassVar[int | None] = None  # None: the rest of the context
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None  # 0: only with echo (completions)
    temperature: NonNegFloat | None = None
    top_p: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = None
    ignore_eos: bool | None = None
    return_token_ids: bool | None = None
    user: str | None = None
    presence_penalty: Annotated[float, Field(allow_inf_nan=False)] | None = None
    frequency_penalty: Annotated[float, Field(allow_inf_nan=False)] | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    @property
    def num_choices(self) -> int:
        """n: the choices per prompt."""
        return 1 if self.n is None else self.n

    @property
    def num_candidates(self) -> int:
        """The choices sampled per prompt (completions' best_of may ask for more than are answered)."""
        return self.num_choices

    def check_supported(self) -> None:
        """Raise a 400 for parameters with no neutral value, and for n out of range."""
        if not 1 <= self.num_choices <= MAX_CHOICES:
            raise APIError(400, f"n must be in [1, {MAX_CHOICES}], got {self.n}", param="n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0):
                raise unsupported(name, "a non-zero penalty")
        if self.logit_bias:
            raise unsupported("logit_bias", "logit bias")
        if self.max_tokens == 0 and not self.echoes:
            raise APIError(
                400, "max_tokens must be >= 1 (0 only with echo, on completions)", param="max_tokens"
            )
        requested = self.requested_constraint()
        if requested is not None:
            check_constraint(*requested)

    def requested_constraint(self) -> tuple[str, StructuredOutput] | None:
        """(the field it came in, the structured output it asks for), or None for free text."""
        return requested_constraint({name: getattr(self, name) for name in STRUCTURED_FIELDS})

    def stop_strings(self) -> tuple[str, ...]:
        """The stop strings, validated (non-empty, at most MAX_STOP_STRINGS)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
            raise APIError(400, f"stop takes up to {MAX_STOP_STRINGS} non-empty strings", param="stop")
        return tuple(stops)

    def sampling_params(self, max_tokens: int, vocab_size: int) -> SamplingParams:
        """The engine's SamplingParams; top_k is capped at the vocabulary (the same distribution)."""
        top_k = 0 if self.top_k in (None, -1) else min(int(self.top_k), vocab_size)
        try:
            return SamplingParams(
                temperature=1.0 if self.temperature is None else self.temperature,
                top_k=top_k,
                top_p=1.0 if self.top_p is None else self.top_p,
                seed=self.seed,
                max_tokens=max_tokens,
                stop_token_ids=tuple(self.stop_token_ids or ()),
                ignore_eos=bool(self.ignore_eos),
                logprobs=self.num_logprobs,
                prompt_logprobs=self.num_prompt_logprobs,
                structured_output=requested[1] if (requested := self.requested_constraint()) else None,
            )
        except SamplingParamsError as exc:
            raise APIError(400, str(exc), param=self.param_name(exc.param)) from exc

    @property
    def num_logprobs(self) -> int | None:
        """The alternatives per token the engine reports (None: no logprobs)."""
        return None

    @property
    def num_prompt_logprobs(self) -> int | None:
        """The alternatives per prompt token the engine reports (None: no prompt logprobs)."""
        return None

    @property
    def echoes(self) -> bool:
        """Whether the answer starts with the prompt (completions' echo)."""
        return False

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """Whether every chunk of a stream carries the token counts so far (needs include_usage, as vLLM)."""
        return self.include_usage and bool(self.stream_options and self.stream_options.continuous_usage_stats)

    @property
    def requested_max_tokens(self) -> int | None:
        """The max_tokens the client asked for (None: the default)."""
        return self.max_tokens

    @property
    def max_tokens_param(self) -> str:
        """The field the client's max_tokens came in."""
        return "max_tokens"

    def param_name(self, engine_param: str) -> str:
        """This request's field for a value the engine names (prompt, max_tokens, structured_output)."""
        if engine_param == "structured_output":
            requested = self.requested_constraint()
            return requested[0] if requested else engine_param
        return {"prompt": self.prompt_param, "max_tokens": self.max_tokens_param}.get(
            engine_param, engine_param
        )

    def resolve_max_tokens(self, num_prompt: int, max_model_len: int) -> int:
        """The tokens to generate (when not asked: the default, or the rest of the context); a 400 that
        names the prompt when it leaves no room, or max_tokens when more are asked than there is room for."""
        room = max_model_len - num_prompt
        if room < 1:
            raise self._too_long(
                f"the prompt has {num_prompt} tokens but this model's maximum context length is "
                f"{max_model_len} (the prompt and at least one generated token); shorten the "
                f"{self.prompt_param} to at most {max_model_len - 1} tokens",
                self.prompt_param,
            )
        max_tokens = self.requested_max_tokens or self.default_max_tokens or room
        if max_tokens > room:
            name = self.max_tokens_param
            asked = name if self.requested_max_tokens else f"{name} (by default)"
            raise self._too_long(
                f"this model's maximum context length is {max_model_len} tokens; the prompt has "
                f"{num_prompt} and {asked} is {max_tokens}; lower {name} to at most {room} or "
                f"shorten the {self.prompt_param}",
                name,
            )
        return max_tokens

    def rejection_error(self, exc: RequestRejected | SamplingParamsError) -> APIError:
        """The 400 for a request the engine rejects, naming this request's field."""
        error = as_api_error(exc)
        error.param = self.param_name(exc.param)
        return error

    @staticmethod
    def _too_long(message: str, param: str) -> APIError:
        return APIError(400, message, param=param, code="context_length_exceeded")


class CompletionRequest(_GenerationRequest):
    """POST /v1/completions: one prompt (text or token ids)."""

    default_max_tokens: ClassVar[int | None] = 16  # OpenAI's default for completions
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check_supported(self) -> None:
        """Also reject best_of other than n, and suffix (logprobs out of [0, 20] is a 400 from
        SamplingParams)."""
        super().check_supported()
        if self.best_of is not None and self.best_of < self.num_choices:
            raise APIError(
                400, f"best_of must be >= n ({self.num_choices}), got {self.best_of}", param="best_of"
            )
        if self.best_of is not None and self.best_of > MAX_CHOICES:
            raise APIError(400, f"best_of must be in [n, {MAX_CHOICES}], got {self.best_of}", param="best_of")
        if self.ranks and self.stream:
            raise APIError(
                400, "best_of > n cannot be streamed: the best are known at the end only", param="best_of"
            )
        if self.suffix:
            raise unsupported("suffix", "suffix")

    def param_name(self, engine_param: str) -> str:
        """As the base's; the engine's n (choices sampled) is best_of when it ranks."""
        return "best_of" if engine_param == "n" and self.ranks else super().param_name(engine_param)

    @property
    def ranks(self) -> bool:
        """best_of > n: more candidates are sampled than answered, the best by cumulative logprob."""
        return self.best_of is not None and self.best_of > self.num_choices

    @property
    def num_candidates(self) -> int:
        """The choices sampled per prompt: best_of when it ranks, else n."""
        return self.best_of if self.ranks and self.best_of is not None else self.num_choices

    @property
    def num_logprobs(self) -> int | None:
        """logprobs; 0 when only the ranking needs them (each sampled token's own logprob)."""
        return 0 if self.logprobs is None and self.ranks else self.logprobs

    @property
    def num_prompt_logprobs(self) -> int | None:
        return self.logprobs if self.echo else None

    @property
    def echoes(self) -> bool:
        return bool(self.echo)

    @property
    def requested_max_tokens(self) -> int | None:
        """max_tokens; 0 (echo only) asks the engine for one token that the answer leaves out."""
        return 1 if self.max_tokens == 0 else self.max_tokens

    def prompts_ids(self, tokenizer: Tokenizer, vocab_size: int) -> list[list[int]]:
        """Token ids of each prompt (one, or a list of strings or token lists), in order."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) > MAX_PROMPTS:
                raise APIError(
                    400, f"prompt takes at most {MAX_PROMPTS} prompts, got {len(prompt)}", param="prompt"
                )
            items = cast(list[str | list[int]], prompt)
            return [self._ids(item, tokenizer, vocab_size) for item in items]
        return [self._ids(cast(str | list[int], prompt), tokenizer, vocab_size)]

    @staticmethod
    def _ids(prompt: str | list[int], tokenizer: Tokenizer, vocab_size: int) -> list[int]:
        """Token ids of one prompt; ids must lie inside the model's vocabulary."""
        if isinstance(prompt, str):
            return encode_text(tokenizer, prompt, "prompt")
        ids = list(prompt)
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise APIError(
                400, f"prompt token ids must be in [0, {vocab_size}), got {bad[:5]}", param="prompt"
            )
        return ids


class ContentPart(BaseModel):
    """A text part of a message's content (other part types are not supported)."""

    model_config = _REQUEST
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat message."""

    model_config = _REQUEST
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined by newlines)."""
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_GenerationRequest):
    """POST /v1/chat/completions."""

    prompt_param: ClassVar[str] = "messages"
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None

    def check_supported(self) -> None:
        """Also reject tools, and top_logprobs without logprobs."""
        super().check_supported()
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        if self.tools:
            raise unsupported("tools", "tool calling")

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def param_name(self, engine_param: str) -> str:
        """As the base's, and the engine's logprobs (how many alternatives) is chat's top_logprobs."""
        return "top_logprobs" if engine_param == "logprobs" else super().param_name(engine_param)

    @property
    def requested_max_tokens(self) -> int | None:
        """max_completion_tokens (the newer name) or max_tokens."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def max_tokens_param(self) -> str:
        return "max_tokens" if self.max_completion_tokens is None else "max_completion_tokens"


def encode_text(tokenizer: Tokenizer, text: str, param: str) -> list[int]:
    """Token ids of text; 400 for text that is not valid Unicode (a lone surrogate sent as \\ud800)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(
            400, f"{param} is not valid Unicode: {exc.reason} at index {exc.start}", param=param
        ) from exc
    return tokenizer.encode(text)


def check_model_name(asked: str | None, served: str) -> None:
    """A 404 naming `model` unless `asked` (None: whatever is served) is the model this server serves."""
    if asked is not None and asked != served:
        message = f"model {asked!r} does not exist; this server serves {served!r}"
        raise APIError(404, message, param="model", code="model_not_found")
