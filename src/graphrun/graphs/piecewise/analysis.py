"""Which nodes of a traced graph run eagerly between segments, and why: marked, or proven uncapturable.

The graph runs once on the example inputs, one node at a time. A node runs eager when it is marked
(registry.py), when the runner's predicate says so, when it consumes a non-tensor value an eager node
produced (a number read by `.item()` must stay a live Python value, not one frozen into a graph), or
when running it under the simulator's capture checks raises: a host sync (`.item()`, `.cpu()`,
`nonzero`, masked indexing) or an op the backend cannot capture. Those are found automatically and
logged by node name, so an operator sees where the graph was cut. The checks run on any device.
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
        self, module: fx.GraphModule, predicate: NodePredicate | None, uncapturable: frozenset[Any]
    ) -> None:
        super().__init__(module)
        self.splits: dict[fx.Node, SplitPoint] = {}
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
        return None


def find_splits(
    module: fx.GraphModule,
    flat_inputs: Sequence[Any],
    predicate: NodePredicate | None = None,
    uncapturable: frozenset[Any] = frozenset(),
) -> dict[fx.Node, SplitPoint]:
    """The graph's split points, by node, from one run on `flat_inputs` (the placeholders, in order)."""
    probe = _Probe(module, predicate, uncapturable)
    with torch.no_grad():
        probe.run(*flat_inputs)
    return probe.splits


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []
