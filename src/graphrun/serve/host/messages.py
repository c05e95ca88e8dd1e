"""Everything that crosses between the HTTP side and the engine host: frozen messages, events, errors.

Nothing else crosses, over either transport (a thread's queue or a process's pipe): this module is the
whole envelope. `ToHost` goes from the client to the host loop, `ToClient` back; requests are named by
the client's request ids. What a request asks and what it gets are the served model's own frozen types
(its submission, info and events, next to the model): the host carries them and never looks inside.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from graphrun.errors import GraphrunError

Info = TypeVar("Info", bound="ModelFacts")  # a served model's info: start-up facts, what HTTP needs
E = TypeVar("E")  # a served model's event (its own frozen types; a token stays a plain tuple)


class ModelFacts(Protocol):
    """What the host reads of a served model's info: its start-up facts for /health."""

    @property
    def facts(self) -> dict[str, Any]: ...


class Submission(Protocol):
    """A served model's request message (a frozen dataclass next to the model): what the host reads of it."""

    @property
    def request_ids(self) -> tuple[int, ...]: ...


ABORTED: tuple[None, str] = (None, "abort")  # the event that ends an aborted request: no item, a reason
Ended = Exception | tuple[None, str]  # what the host itself tells a request: why it failed, or ABORTED


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


Command = Abort | AbortAll | Stop | Ask | Delivered
ToHost = Command | Submission


@dataclass(frozen=True, slots=True)
class Ready(Generic[Info]):
    info: Info


@dataclass(frozen=True, slots=True)
class StartFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Admitted:
    request_id: int
    result: int | Exception  # the request's seq id, or why it was refused (which ends it)


@dataclass(frozen=True, slots=True)
class Events(Generic[E]):
    """One step's events in order (or failures); trace_index: the step's record when tracing."""

    batch: tuple[tuple[int, E | Ended], ...]
    trace_index: int | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    call_id: int
    value: bytes | dict[str, Any] | str | None


ToClient = Ready[Info] | StartFailed | Admitted | Events[E] | Answer
