"""One captured segment of a piecewise graph: captured once per rung, replayed in place of its submodule.

A Segment stands in the split parent where its submodule was. What it does on a call depends on what its
PiecewiseBackend (backend.py) is doing: nothing (eager: warm-up, the eager reference, estimates),
recording one rung (capture the submodule on its inputs, keep the graph) or replaying one rung (replay
the graph recorded at that position and return the outputs it writes).

Inputs that are static already (the runner's input buffers, an earlier segment's outputs: same address
on every replay) are used as they are; inputs an eager split made are cloned once into a buffer of the
segment and copied into it on each replay. A replay whose input changed shape or a non-tensor input
that changed value cannot use the graph: it raises DynamicInputError, and the call runs eager.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from graphrun.graphs.backends import Backend, CapturedGraph
from graphrun.graphs.failure import DynamicInputError, SegmentCaptureError


@dataclass(slots=True)
class SegmentGraph:
    """One segment at one rung: its graph, its static inputs (None: not a tensor) and its outputs."""

    graph: CapturedGraph
    inputs: list[Any]  # the tensors (or values) the graph was recorded on, in argument order
    outputs: Any


class SegmentOwner(Protocol):
    """What a Segment reads from its PiecewiseBackend (backend.py), which imports this module."""

    inner: Backend
    label: str

    @property
    def state(self) -> Any:
        """None (run eager), or a recording or replay with .recording, .segments and .next_segment()."""

    def is_static(self, value: Any) -> bool:
        """Whether a tensor lives in static storage."""

    def mark_static(self, value: Any) -> None:
        """Mark tensors as static storage."""


class Segment(torch.nn.Module):
    """A captured stand-in for one submodule of the split parent."""

    def __init__(self, module: torch.nn.Module, label: str, backend: SegmentOwner) -> None:
        super().__init__()
        self.module = module
        self.label = label
        self._backend = backend

    def forward(self, *args: Any) -> Any:
        state = self._backend.state
        if state is None:
            return self.module(*args)
        if state.recording:
            graph = self._capture(args)
            state.segments.append(graph)
            return graph.outputs
        return _replay(state.next_segment(), args)

    def _capture(self, args: tuple[Any, ...]) -> SegmentGraph:
        backend = self._backend
        inputs = [_static_input(a, backend.is_static(a)) for a in args]
        holder: list[Any] = []

        def body() -> None:
            holder.clear()
            holder.append(self.module(*inputs))

        try:
            graph = backend.inner.capture(body, f"{backend.label}:{self.label}")
        except Exception as exc:
            raise SegmentCaptureError(f"segment {self.label}: {exc}") from exc
        backend.mark_static(holder[0])
        return SegmentGraph(graph, inputs, holder[0])


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
    segment.graph.replay()
    return segment.outputs
