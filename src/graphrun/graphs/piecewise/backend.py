"""The backend a piecewise runner captures with: one "graph" per rung is a sequence of segment graphs.

It wraps the real backend (cuda or sim), so piecewise rungs go through the same capture machinery as FULL
ones (capture.py: warm-up, memory budget, verification of exact and padded sizes, failure reasons, status,
metrics). Capturing a rung runs the split callable once: each Segment captures its submodule with the
inner backend (one shared pool on CUDA) and the eager splits run in between. Replaying the rung runs the
callable again: segments replay their graphs in the same order, splits run eagerly.

`state` is the one piece of mutable state: None (segments run eager), a recording or a replay. Calls are
serialised by the owning runner's lock, so one state at a time is enough.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from graphrun.graphs.backends import Backend
from graphrun.graphs.backends.sim import storage_key
from graphrun.graphs.failure import SegmentCaptureError
from graphrun.graphs.piecewise.segment import SegmentGraph


@dataclass(slots=True)
class _State:
    """A rung being recorded (segments appended) or replayed (segments consumed in order)."""

    recording: bool
    segments: list[SegmentGraph] = field(default_factory=list)
    position: int = 0

    def next_segment(self) -> SegmentGraph:
        segment = self.segments[self.position]
        self.position += 1
        return segment

    def peek_segment(self) -> SegmentGraph:
        """The segment the next call consumes, left in place."""
        return self.segments[self.position]


def _release(segments: list[SegmentGraph]) -> None:
    for segment in segments:
        if segment.graph is not None:
            segment.graph.release()


class PiecewiseGraph:
    """One rung: its segment graphs, replayed by re-running the split callable (the body)."""

    def __init__(
        self, backend: PiecewiseBackend, body: Callable[[], object], segments: list[SegmentGraph]
    ) -> None:
        self._backend = backend
        self._body = body
        self._segments = segments
        self.nbytes = sum(s.graph.nbytes for s in segments if s.graph is not None)
        self._inference_mode = torch.is_inference_mode_enabled()

    @property
    def num_segments(self) -> int:
        """Segment graphs this rung replays."""
        return len(self._segments)

    def replay(self) -> None:
        """Replay the segments in order, the splits eagerly between them (in capture's autograd mode)."""
        mode = torch.inference_mode() if self._inference_mode else torch.no_grad()
        with mode, self._backend.replaying(self._segments):
            self._body()

    def release(self) -> None:
        """Release every segment graph."""
        _release(self._segments)
        self._segments = []


class PiecewiseBackend:
    """Captures a rung as segment graphs (inner backend) with eager splits; see the module docstring."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.device = inner.device
        self.label = "piecewise"
        self.state: _State | None = None
        self._static: set[int] = set()
        self.eager_segments: dict[str, str] = {}  # segments that failed to capture at some size -> why

    # ----- static storage ----------------------------------------------------------------------------

    def register_static(self, tensors: list[torch.Tensor]) -> None:
        """The runner's input buffers (and the model's weights): segments read them in place."""
        self.mark_static(tensors)
        register = getattr(self.inner, "register_static", None)
        if register is not None:
            register(tensors)

    def mark_static(self, value: Any) -> None:
        """Tensors (in any nesting of lists and tuples) whose address is the same on every replay."""
        if isinstance(value, torch.Tensor):
            self._static.add(storage_key(value))
        elif isinstance(value, list | tuple):
            for item in value:
                self.mark_static(item)

    def is_static(self, value: Any) -> bool:
        """Whether a tensor lives in static storage (so a graph may read it in place)."""
        return isinstance(value, torch.Tensor) and storage_key(value) in self._static

    # ----- the Backend protocol ----------------------------------------------------------------------

    @property
    def current_rung(self) -> int | None:
        """Passed to the inner backend (the simulator's fault plan targets rungs)."""
        return getattr(self.inner, "current_rung", None)

    @current_rung.setter
    def current_rung(self, rung: int | None) -> None:
        if hasattr(self.inner, "current_rung"):
            self.inner.current_rung = rung

    def warmup(self, body: Callable[[], object], iters: int) -> None:
        """Warm up with every segment eager (lazy state initialises as in the graphs)."""
        self.inner.warmup(body, iters)

    def estimate_bytes(self, body: Callable[[], object]) -> int:
        """The inner backend's estimate of one eager run."""
        return self.inner.estimate_bytes(body)

    def projected_pool_bytes(self, estimate: int) -> int:
        """The inner backend's projection (segments share its pool)."""
        return self.inner.projected_pool_bytes(estimate)

    def capture(self, body: Callable[[], object], label: str = "") -> PiecewiseGraph:
        """Run `body` once, each segment capturing its graph; the splits run eager."""
        self.label = label or self.label
        state = _State(recording=True)
        self.state = state
        try:
            body()
            if not any(segment.graph is not None for segment in state.segments):
                raise SegmentCaptureError("no segment was captured at this size: every piece runs eager")
        except BaseException:
            _release(state.segments)
            raise
        finally:
            self.state = None
        return PiecewiseGraph(self, body, state.segments)

    def note_eager_segment(self, label: str, reason: str) -> None:
        """A segment failed to capture and runs eager at one size (listed in the runner's status)."""
        self.eager_segments[label] = reason

    @contextlib.contextmanager
    def replaying(self, segments: list[SegmentGraph]) -> Iterator[None]:
        """Segments replay `segments` in order for the duration of the block."""
        self.state = _State(recording=False, segments=segments)
        try:
            yield
        finally:
            self.state = None

    def pool_bytes(self) -> int:
        """Memory the inner backend's graphs hold."""
        return self.inner.pool_bytes()

    def synchronize(self) -> None:
        """Wait for the inner backend's queued work."""
        self.inner.synchronize()

    def range(self, label: str) -> contextlib.AbstractContextManager[None]:
        """The inner backend's profiler range."""
        return self.inner.range(label)
