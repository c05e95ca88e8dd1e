"""Everything that crosses between the HTTP side and the engine host: frozen messages, events, errors.

Nothing else crosses, over either transport (a thread's queue or a process's pipe): this module is the
whole protocol. `ToHost` goes from the client to the host loop, `ToClient` back; requests are named by
the client's request ids. A token event stays a plain `(token id, finish reason)` tuple: it pickles ten
times faster than an object, and a step has one per stream.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphrun.errors import GraphrunError
from graphrun.llm.logprobs import TokenLogprobs
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.tokenizer import Tokenizer
from graphrun.serve.infer.schema import InferSchema


@dataclass(frozen=True, slots=True)
class PromptCached:
    """How many prompt tokens the prefix cache held for the request (before its first token)."""

    num_tokens: int


@dataclass(frozen=True, slots=True)
class PromptLogprobs:
    """The logprobs of the prompt's tokens but the first (echo with logprobs), before the first token."""

    items: tuple[TokenLogprobs, ...]


@dataclass(frozen=True, slots=True)
class InferResult:
    """A tensor request's outputs by name, its own rows only: its one (terminal) event."""

    outputs: tuple[tuple[str, np.ndarray], ...]


Token = tuple[int | None, str | None]  # (token id, finish reason); (None, "abort") after an abort
# a token, or why the request failed, or (never terminal) the prefix-cache hit, the logprobs of the token
# whose event comes next, or the prompt's; a tensor request's outputs
Event = Token | Exception | PromptCached | TokenLogprobs | PromptLogprobs | InferResult


def is_terminal(event: Event) -> bool:
    """True for the event that ends a request: an error or a finish reason."""
    if isinstance(event, PromptCached | TokenLogprobs | PromptLogprobs):
        return False
    return isinstance(event, Exception | InferResult) or event[1] is not None


class Unavailable(GraphrunError, RuntimeError):
    """The server cannot take requests now; `reason` is the client's state (starting, draining...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, str(self)))


class QueueFull(GraphrunError, RuntimeError):
    """More requests are in flight than the engine runs at once plus the queue holds."""


class EngineFailure(GraphrunError, RuntimeError):
    """The engine step that carried this request raised, or the engine is gone; the request is over."""


@dataclass(frozen=True, slots=True)
class Submit:
    """One prompt's requests (n choices share one prefill; choice j is seeded seed + j)."""

    request_ids: tuple[int, ...]
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    arrival: float  # time.monotonic() at submission: CLOCK_MONOTONIC, one clock for every process


@dataclass(frozen=True, slots=True)
class Abort:
    request_id: int  # unknown or over: ignored


@dataclass(frozen=True, slots=True)
class AbortAll:
    """The drain deadline passed: end every request with a 503 error, never a finish reason."""


@dataclass(frozen=True, slots=True)
class Stop:
    """End the host loop; requests still there end with a 503 error."""


class Question(enum.Enum):
    """Asked while the model steps; answered at once, off the host loop."""

    METRICS = "metrics"  # the engine side's Prometheus text (bytes)
    MEMORY = "memory"  # memory now where the model runs (dict)
    PROGRESS = "progress"  # graph capture progress, "captured 36/36" (str), or None


@dataclass(frozen=True, slots=True)
class Ask:
    question: Question
    call_id: int


@dataclass(frozen=True, slots=True)
class Delivered:
    """(tracing) The step recorded as `trace_index` reached its requests at `when` (perf_counter)."""

    trace_index: int
    when: float


@dataclass(frozen=True, slots=True)
class InferSubmit:
    """One tensor request (serve/infer/), validated on the HTTP side: numpy arrays with `rows` rows in
    dim 0, in the model's input order (the engine side keys it by its bucket)."""

    request_ids: tuple[int]
    tensors: tuple[tuple[str, np.ndarray], ...]
    rows: int
    arrival: float  # time.monotonic() at submission


AnySubmit = Submit | InferSubmit
ToHost = Submit | InferSubmit | Abort | AbortAll | Stop | Ask | Delivered


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the HTTP side needs of the served model, and its start-up facts for /health."""

    tokenizer: Tokenizer
    vocab_size: int
    max_model_len: int
    source: str  # the preset or folder it was loaded from
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferInfo:
    """A tensor model's schema (names, dtypes, shapes, rungs), batching and start-up facts."""

    schema: InferSchema
    source: str  # the --module factory or --exported archive
    device: str
    backend: str  # the graph backend its runner resolved
    max_wait_ms: float
    engine_pid: int

    @property
    def facts(self) -> dict[str, Any]:
        """For /health, as ModelInfo.facts."""
        rungs, wait = list(self.schema.rungs), self.max_wait_ms
        facts = {"model": self.source, "device": self.device, "graph_backend": self.backend}
        return {**facts, "rungs": rungs, "max_wait_ms": wait, "engine_pid": self.engine_pid}


@dataclass(frozen=True, slots=True)
class Ready:
    info: ModelInfo | InferInfo


@dataclass(frozen=True, slots=True)
class StartFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Admitted:
    request_id: int
    result: int | Exception  # the request's seq id, or why it was refused (which ends it)


@dataclass(frozen=True, slots=True)
class Events:
    """One step's events in order (or failures); trace_index: the step's record when tracing."""

    batch: tuple[tuple[int, Event], ...]
    trace_index: int | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    call_id: int
    value: bytes | dict[str, Any] | str | None


ToClient = Ready | StartFailed | Admitted | Events | Answer
