"""The contract between an owner of graphs (a runner, later a piecewise segment) and the capture machinery.

A CaptureSpec says what to capture: the callable, its static input layout (which carries the ladder),
the options, the backend that records and the name logs and metrics use. It is built once and never
changes; the capture machinery (capture.py) reads only it, so it depends on no runner. What capture
hands back is a CaptureResult: the graphs, every rung's status and the static outputs the graphs write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from graphrun.graphs.backends import Backend, CapturedGraph
from graphrun.graphs.inputs import InputLayout
from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.outputs import StaticOutputs
from graphrun.graphs.status import CaptureFailure, CompileReport, RungStatus


@dataclass(frozen=True, slots=True)
class CaptureSpec:
    """What one owner captures: `fn` on `inputs`' static buffers at each rung, under `options`."""

    fn: Callable[..., Any]
    inputs: InputLayout
    options: RunnerOptions
    backend: Backend
    name: str

    @property
    def sizes(self) -> tuple[int, ...]:
        """The rungs, ascending."""
        return self.inputs.sizes

    def call_at(self, rung: int, fn: Callable[..., Any] | None = None) -> Any:
        """Run `fn` (default: the spec's) eagerly on the static input buffers of `rung` (what a graph of
        that rung records)."""
        args, kwargs = self.inputs.in_spec.unflatten(self.inputs.rung_leaves(rung))
        return (self.fn if fn is None else fn)(*args, **kwargs)


@dataclass(frozen=True, slots=True)
class CaptureResult:
    """One capture pass: a graph per captured rung, a status per rung, the static outputs (None when no
    rung ran at all), the pass's duration and pool growth, and its compile phase (None: not compiled)."""

    graphs: Mapping[int, CapturedGraph]
    statuses: Mapping[int, RungStatus]
    outputs: StaticOutputs | None
    seconds: float = 0.0
    pool_bytes: int = 0
    compile: CompileReport | None = None

    @property
    def num_captured(self) -> int:
        """Rungs that hold a graph (exact-size-only ones included)."""
        return sum(s.captured for s in self.statuses.values())

    @property
    def capture_seconds(self) -> float:
        """Seconds spent on the captured rungs, their checks included (failed rungs not counted)."""
        return sum(s.capture_seconds for s in self.statuses.values() if s.captured)

    def failures(self) -> dict[CaptureFailure, int]:
        """Rungs per reason: eager rungs by why, and captured rungs that replay exact-size calls only."""
        counts: dict[CaptureFailure, int] = {}
        for status in self.statuses.values():
            if status.reason is not None:
                counts[status.reason] = counts.get(status.reason, 0) + 1
        return counts
