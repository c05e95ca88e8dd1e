"""What tracing observes of the bridge: off by default; serve/trace.py implements both sides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from graphrun.step_timing import StepTiming


class HostObserver(Protocol):
    def serving(self) -> None:
        """Start-up is over."""

    def step(self, timing: StepTiming, posted: float, request_ids: Sequence[int]) -> int | None:
        """A step's events are being sent; returns its record's index (None: not recorded)."""

    def delivered(self, index: int, when: float) -> None:
        """(any thread) The HTTP side delivered that step's events at `when` (perf_counter)."""

    def close(self) -> None:
        """The host loop has ended: write the record."""


class ClientObserver(Protocol):
    def serving(self) -> None:
        """The engine is ready."""

    def sent(self, request_id: int) -> None:
        """A chunk of the request was written to its client."""

    def close(self) -> None:
        """The engine is gone: write the record."""
