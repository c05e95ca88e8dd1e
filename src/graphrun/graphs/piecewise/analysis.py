"""Which nodes of a traced graph run eagerly between segments, and why: marked, or proven uncapturable.

The graph runs once on the example inputs, one node at a time. A node runs eager when it is marked
(registry.py), when the runner's predicate says so, when it consumes a non-tensor value an eager node
produced (a number read by `.item()` must stay a live Python value, not one frozen into a graph), or
when running it under the simulator's capture checks raises: a host sync (`.item()`, `.cpu()`,
`nonzero`, masked indexing) or an op the backend cannot capture, or when its output or an input has a
data-dependent shape: the graph is run a second time on other values of the same shapes (floating
inputs redrawn), and a node whose shapes differ between the runs cannot sit in a graph of fixed shapes.
Those are found automatically and logged by node name, so an operator sees where the graph was cut.
The checks run on any device.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from graphrun.errors import HostSyncError, UncapturableOpError
from graphrun.graphs.backends.sim import capture_checks, storage_key
from graphrun.graphs.piecewise.registry import NodePredicate, is_marked

log = logging.getLogger(__name__)

_CALLS = ("call_function", "call_method", "call_module")


@dataclass(frozen=True, slots=True)
class SplitPoint:
    """One node that runs eager, and why (marked, predicate, host_sync, uncapturable_op, scalar input)."""

    node: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.node} ({self.reason}{': ' + self.detail if self.detail else ''})"


class _Probe(fx.Interpreter):
    """Runs the graph node by node, deciding for each call node whether it can be captured."""

    def __init__(
        self,
        module: fx.GraphModule,
        predicate: NodePredicate | None,
        uncapturable: frozenset[Any],
        dynamic: set[fx.Node],
    ) -> None:
        super().__init__(module)
        self.splits: dict[fx.Node, SplitPoint] = {}
        self._dynamic = dynamic
        self._predicate = predicate
        self._uncapturable = uncapturable
        self._device: set[int] = set()
        self._result: Any = None

    def run_node(self, n: fx.Node) -> Any:
        if n.op not in _CALLS:
            result = super().run_node(n)
        else:
            split = self._declared_split(n) or self._probe(n)
            if split is not None:
                self.splits[n] = split
            result = self._result if split is None else super().run_node(n)
        self._device.update(storage_key(t) for t in _tensors(result))
        return result

    def _probe(self, n: fx.Node) -> SplitPoint | None:
        """Run `n` under the capture checks; a host sync or uncapturable op makes it a split."""
        try:
            with capture_checks(self._device, self._uncapturable):
                self._result = super().run_node(n)
        except (HostSyncError, UncapturableOpError) as exc:
            reason = "host_sync" if isinstance(exc, HostSyncError) else "uncapturable_op"
            split = SplitPoint(n.name, reason, str(exc).splitlines()[0][:120])
            log.info("piecewise: split at %s, found automatically: %s", n.name, split)
            return split
        return None

    def _declared_split(self, n: fx.Node) -> SplitPoint | None:
        if is_marked(n, self.module):
            return SplitPoint(n.name, "marked", str(n.target))
        if self._predicate is not None and self._predicate(n):
            return SplitPoint(n.name, "predicate", str(n.target))
        for source in n.all_input_nodes:
            if source in self.splits and not isinstance(self.env[source], torch.Tensor):
                return SplitPoint(n.name, "scalar_input", f"reads {source.name}")
        changed = [m.name for m in (n, *n.all_input_nodes) if m in self._dynamic]
        if changed:
            split = SplitPoint(n.name, "dynamic_shape", f"shape of {changed[0]} depends on the data")
            log.info("piecewise: split at %s, found automatically: %s", n.name, split)
            return split
        return None


def find_splits(
    module: fx.GraphModule,
    flat_inputs: Sequence[Any],
    predicate: NodePredicate | None = None,
    uncapturable: frozenset[Any] = frozenset(),
) -> dict[fx.Node, SplitPoint]:
    """The graph's split points, by node, from runs on `flat_inputs` (the placeholders, in order)."""
    with torch.no_grad():
        probe = _Probe(module, predicate, uncapturable, _dynamic_nodes(module, flat_inputs))
        probe.run(*flat_inputs)
    return probe.splits


class _Shapes(fx.Interpreter):
    """Runs the graph and records each node's output shapes."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.shapes: dict[fx.Node, list[tuple[int, ...]]] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.shapes[n] = [tuple(t.shape) for t in _tensors(result)]
        return result


def _dynamic_nodes(module: fx.GraphModule, flat_inputs: Sequence[Any]) -> set[fx.Node]:
    """Nodes whose output shapes change when the floating inputs are redrawn (same shapes)."""
    gen = torch.Generator().manual_seed(1234)
    redrawn = [
        torch.randn(t.shape, generator=gen).to(t)
        if isinstance(t, torch.Tensor) and t.is_floating_point()
        else t
        for t in flat_inputs
    ]
    runs = []
    for inputs in (flat_inputs, redrawn):
        shapes = _Shapes(module)
        try:
            shapes.run(*inputs)
        except Exception as exc:  # a graph that cannot run on other values: keep what the first run knows
            log.debug("piecewise: shape probe failed (%s); no data-dependent shapes detected", exc)
            return set()
        runs.append(shapes.shapes)
    return {n for n, shape in runs[0].items() if runs[1].get(n) != shape}


def _redraw(value: Any, gen: torch.Generator) -> Any:
    """Other values of the same shape for a floating tensor; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return torch.randn(value.shape, generator=gen).to(value)
    return value


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []
