"""One captured segment of a piecewise graph: captured once per rung, replayed in place of its submodule.

A Segment stands in the split parent where its submodule was. What it does on a call depends on what its
PiecewiseBackend (backend.py) is doing: nothing (eager: warm-up, the eager reference, estimates),
recording one rung (capture the submodule on its inputs, keep the graph) or replaying one rung (replay
the graph recorded at that position and return the outputs it writes).

Inputs that are static already (the runner's input buffers, an earlier segment's outputs: same address
on every replay) are used as they are; inputs an eager split made are cloned once into a buffer of the
segment and copied into it on each replay. A replay whose input changed shape or a non-tensor input
that changed value cannot use the graph: it raises DynamicInputError, and the call runs eager.

A capture that fails with a host sync or an uncapturable op proves the segment uncapturable at that size
(the analysis missed it: the op behaves so only on the device, say): the segment then runs eager there,
logged and listed in the runner's status, and the size keeps the graphs of its other segments. Any other
failure (out of memory, say) fails the size, as it would a FULL graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from graphrun.graphs.backends import Backend, CapturedGraph
from graphrun.graphs.failure import DynamicInputError, SegmentCaptureError, classify, root_cause
from graphrun.graphs.status import CaptureFailure

log = logging.getLogger(__name__)

_PROVEN_UNCAPTURABLE = (CaptureFailure.HOST_SYNC, CaptureFailure.UNCAPTURABLE_OP)


@dataclass(slots=True)
class SegmentGraph:
    """One segment at one rung: its graph (None: it failed to capture and runs eager at this rung), its
    static inputs and its outputs."""

    graph: CapturedGraph | None
    inputs: list[Any]  # the tensors (or values) the graph was recorded on, in argument order
    outputs: Any


class SegmentOwner(Protocol):
    """What a Segment reads from its PiecewiseBackend (backend.py), which imports this module."""

    inner: Backend
    label: str

    @property
    def state(self) -> Any:
        """None (run eager), or a recording or replay with .recording, .segments, .next_segment() and
        .peek_segment()."""

    def is_static(self, value: Any) -> bool:
        """Whether a tensor lives in static storage."""

    def mark_static(self, value: Any) -> None:
        """Mark tensors as static storage."""

    def note_eager_segment(self, label: str, reason: str) -> None:
        """Remember a segment that failed to capture and runs eager (for status)."""


class Segment(torch.nn.Module):
    """A captured stand-in for one submodule of the split parent."""

    def __init__(self, module: torch.nn.Module, label: str, backend: SegmentOwner) -> None:
        super().__init__()
        self.module = module
        self.label = label
        self._backend = backend
        # compile=True: the submodule compiled by torch.compile (PiecewiseCallable.compiled()), run
        # instead of it while use_compiled is set (the compile phase, warm-up and capture of a rung)
        self.compiled: Any = None
        self.use_compiled = False

    def run(self, *args: Any) -> Any:
        """The submodule, or its compiled twin while that is in use."""
        if self.use_compiled and self.compiled is not None:
            return self.compiled(*args)
        return self.module(*args)

    def replay_buffer(self, index: int) -> torch.Tensor | None:
        """While a rung replays and this segment is next: the static tensor its graph reads as argument
        `index`, so the eager split before it can write its result there and skip the copy (a replay
        copies an argument only when it is not that tensor). None otherwise (eager, recording, a segment
        running eager at this rung, a non-tensor argument)."""
        state = self._backend.state
        if state is None or state.recording:
            return None
        segment: SegmentGraph = state.peek_segment()
        if segment.graph is None:
            return None
        value = segment.inputs[index]
        return value if isinstance(value, torch.Tensor) else None

    def forward(self, *args: Any) -> Any:
        state = self._backend.state
        if state is None:
            return self.run(*args)
        if state.recording:
            graph = self._capture(args)
            state.segments.append(graph)
            return graph.outputs
        segment = state.next_segment()
        return self.run(*args) if segment.graph is None else _replay(segment, args)

    def _capture(self, args: tuple[Any, ...]) -> SegmentGraph:
        backend = self._backend
        inputs = [_static_input(a, backend.is_static(a)) for a in args]
        holder: list[Any] = []

        def body() -> None:
            holder.clear()
            holder.append(self.run(*inputs))

        try:
            graph = backend.inner.capture(body, f"{backend.label}:{self.label}")
        except Exception as exc:
            return self._eager_instead(exc, args)
        graph.replay()  # CUDA capture runs nothing: fill the outputs before an eager split reads them
        backend.mark_static(holder[0])
        return SegmentGraph(graph, inputs, holder[0])

    def _eager_instead(self, exc: Exception, args: tuple[Any, ...]) -> SegmentGraph:
        """A capture that proved the segment uncapturable: run it eager at this rung; else fail the rung."""
        reason = classify(exc)
        if reason not in _PROVEN_UNCAPTURABLE:
            raise SegmentCaptureError(f"segment {self.label}: {exc}") from exc
        detail = (str(root_cause(exc)).strip().splitlines() or [type(exc).__name__])[0][:160]
        log.warning(
            "piecewise: segment %s runs eager at this size: %s (%s)", self.label, reason.value, detail
        )
        self._backend.note_eager_segment(self.label, reason.value)
        return SegmentGraph(None, [], self.run(*args))


def _static_input(arg: Any, static: bool) -> Any:
    """The tensor the graph reads: the argument itself when its address is static, else a clone of it."""
    if not isinstance(arg, torch.Tensor) or static:
        return arg
    return arg.detach().clone()


def _replay(segment: SegmentGraph, args: tuple[Any, ...]) -> Any:
    for arg, static in zip(args, segment.inputs, strict=True):
        if isinstance(static, torch.Tensor):
            if arg is static:
                continue
            if arg.shape != static.shape:
                raise DynamicInputError(
                    f"segment input has shape {tuple(arg.shape)}, captured with {tuple(static.shape)}"
                )
            if arg.data_ptr() != static.data_ptr():
                static.copy_(arg)
        elif arg is not static and arg != static:
            raise DynamicInputError(f"segment input {arg!r} differs from the captured {static!r}")
    assert segment.graph is not None
    segment.graph.replay()
    return segment.outputs
