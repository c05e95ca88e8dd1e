"""Build a piecewise callable: trace, find the split points, cut the graph, put Segments in place.

The result has the original calling convention; a GraphRunner captures it through the PiecewiseBackend
(backend.py) exactly as it captures a whole callable through the real backend. A callable that cannot be
traced yields Untraceable with the tracers' reasons: the runner then runs every call eager, saying why.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import _pytree as fx_pytree

from graphrun.graphs.backends import Backend
from graphrun.graphs.inputs import InputLayout
from graphrun.graphs.piecewise.analysis import SplitPoint, find_splits
from graphrun.graphs.piecewise.backend import PiecewiseBackend
from graphrun.graphs.piecewise.registry import NodePredicate
from graphrun.graphs.piecewise.segment import Segment
from graphrun.graphs.piecewise.split import Piece, SplitGraph, split_graph
from graphrun.graphs.piecewise.trace import Traced, Untraceable, call_traced, trace

log = logging.getLogger(__name__)


class PiecewiseCallable:
    """The split graph behind the original calling convention: segments and eager splits, in order."""

    def __init__(self, traced: Traced, parent: torch.nn.Module, name: str) -> None:
        self._traced = traced
        self.parent = parent
        self.__name__ = name
        self.segments = [m for m in parent.children() if isinstance(m, Segment)]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return call_traced(self._traced, self.parent, args, kwargs)

    def compiled(self) -> Callable[..., Any]:
        """This callable with every segment's submodule compiled (torch.compile, inductor) and the eager
        splits as they are: what compile=True captures in piecewise mode (graphs/compile.py)."""
        for segment in self.segments:
            if segment.compiled is None:
                segment.compiled = torch.compile(segment.module, backend="inductor", mode="default")
        return _CompiledSegments(self)


class _CompiledSegments:
    """Calls a PiecewiseCallable with its segments' compiled twins in use (only during the call)."""

    def __init__(self, fn: PiecewiseCallable) -> None:
        self._fn = fn
        self.__name__ = f"{fn.__name__}-compiled"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        segments = self._fn.segments
        for segment in segments:
            segment.use_compiled = True
        try:
            return self._fn(*args, **kwargs)
        finally:
            for segment in segments:
                segment.use_compiled = False


@dataclass(frozen=True, slots=True)
class PiecewisePlan:
    """What a piecewise runner captures: the split callable, its backend, its split points and pieces."""

    fn: PiecewiseCallable
    backend: PiecewiseBackend
    splits: tuple[SplitPoint, ...]
    pieces: tuple[Piece, ...]
    how: str  # "fx" or "export"

    def describe(self) -> tuple[str, ...]:
        """One line per split point, for status and logs."""
        return tuple(str(s) for s in self.splits)


def build_plan(
    fn: Callable[..., Any],
    example: tuple[tuple[Any, ...], dict[str, Any]],
    inputs: InputLayout,
    backend: Backend,
    predicate: NodePredicate | None = None,
) -> PiecewisePlan | Untraceable:
    """Trace `fn` on the example (args, kwargs), split it, and wrap its segments for capture."""
    args, kwargs = example
    leaves = inputs.in_spec.flatten((args, kwargs))
    checks = [inputs.in_spec.unflatten(inputs.rung_leaves(r)) for r in sorted({inputs.sizes[0], inputs.sizes[-1]})]
    if inputs.sizes[-1] >= 2 and any(leaves[s.index].shape[s.dim] < 2 for s in inputs.batched):
        # torch.export specializes a dynamic dim whose example size is 1 (its 0/1 rule) and then rejects the
        # dynamic spec: trace on the top rung's buffers instead and check against the example as well
        checks, (args, kwargs) = [example, *checks[:-1]], checks[-1]
        leaves = inputs.rung_leaves(inputs.sizes[-1])
    dims = {id(leaves[s.index]): s.dim for s in inputs.batched}
    traced = trace(fn, args, kwargs, lambda leaf: dims.get(id(leaf)), checks)
    if isinstance(traced, Untraceable):
        log.warning("piecewise: %s cannot be traced, every call runs eager: %s", _name(fn), traced.reason)
        return traced
    uncapturable: frozenset[Any] = getattr(backend, "uncapturable", frozenset())
    splits = find_splits(traced.module, _flat_inputs(traced, args, kwargs), predicate, uncapturable)
    graph = split_graph(traced.module, splits)
    wrapped = _wrap_segments(graph, PiecewiseBackend(backend))
    points = tuple(splits.values())
    log.info(
        "piecewise: %s cut into %d segments and %d eager splits at %s",
        _name(fn), graph.num_segments, len(graph.pieces) - graph.num_segments,
        ", ".join(str(p) for p in points) or "no op",
    )  # fmt: skip
    return PiecewisePlan(
        PiecewiseCallable(traced, graph.parent, _name(fn)), wrapped, points, graph.pieces, traced.how
    )


def _wrap_segments(graph: SplitGraph, backend: PiecewiseBackend) -> PiecewiseBackend:
    """Put a Segment in place of each captured piece; the weights are static storage."""
    for piece in graph.pieces:
        if piece.captured:
            label = f"{piece.name}[{piece.first}..{piece.last}]"
            setattr(graph.parent, piece.name, Segment(getattr(graph.parent, piece.name), label, backend))
    backend.mark_static([*graph.parent.parameters(), *graph.parent.buffers()])
    return backend


def _flat_inputs(traced: Traced, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """The graph's placeholders, in order, for one call."""
    if traced.in_spec is not None:
        return list(fx_pytree.tree_flatten_spec((args, kwargs), traced.in_spec))
    bound = inspect.signature(traced.module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return list(bound.arguments.values())


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__
