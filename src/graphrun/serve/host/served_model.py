"""What the engine host drives: any served model (the LLM engine, a batched tensor model; a pipeline next).

The host loop owns the threads, the queue and the transport; a served model owns its requests, and the
types of what they ask (a Submission) and get (its events). It is called from the host loop's thread
only, except `answer`, which must be safe beside a running step (it reads counters).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from graphrun.serve.host.messages import E, Ended, Question, Submission
from graphrun.step_timing import StepTiming

Info_co = TypeVar("Info_co", covariant=True)


@dataclass(frozen=True, slots=True)
class StepOutcome(Generic[E]):
    """One step's events, in order, and where its host time went (None: not timed)."""

    events: Sequence[tuple[int, E | Ended]]
    timing: StepTiming | None


class ServedModel(Protocol[Info_co, E]):
    def info(self) -> Info_co:
        """Start-up facts (ModelFacts) and what the HTTP side needs (a tokenizer and limits, a schema)."""

    def submit(self, submit: Submission) -> list[int | Exception]:
        """Admit the requests (one result per request id: a seq id, or why it was refused; a model
        refuses the submissions of another kind: an LLM's tensors, a tensor model's prompts)."""

    def abort(self, request_id: int) -> bool:
        """Stop a request and free what it holds; False when it is unknown or over."""

    def step(self, on_launched: Callable[[], None]) -> StepOutcome[E]:
        """Run one step (call on_launched once the next batch is on the device)."""

    def drain(self) -> list[int]:
        """Stop every request at once; the ids that were still running."""

    def busy(self) -> bool:
        """Some request is unfinished: step() has work."""

    def has_idle_work(self) -> bool:
        """Background work is left (graph captures): the loop polls instead of blocking while idle."""

    def idle_work(self) -> None:
        """With nothing to step: one slice of background work."""

    def publish(self, num_queued: int) -> None:
        """After each turn of the host loop: occupancy gauges (num_queued: messages not yet applied)."""

    def answer(self, question: Question) -> bytes | dict[str, Any] | str | None:
        """(any thread) The engine side's answer to the HTTP side's question."""

    def close(self) -> None:
        """The host loop's last call: release what outlives the loop's thread (worker processes)."""
