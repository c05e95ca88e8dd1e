"""Cut a traced graph at its split points into alternating submodules: captured segments, eager splits.

Nodes keep their order; each maximal run of capturable nodes is one segment, each run of split nodes
one eager split (torch.fx's split_module builds the submodules and the parent that calls them in order).
The parent passes values between submodules by reference, so a segment's outputs reach the next
submodule as the very tensors its graph writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx
from torch.fx.passes.split_module import split_module

_CALLS = ("call_function", "call_method", "call_module")


@dataclass(frozen=True, slots=True)
class Piece:
    """One submodule of the parent: its attribute name, whether it is captured, its first and last node."""

    name: str
    captured: bool
    first: str
    last: str
    num_nodes: int


@dataclass(frozen=True, slots=True)
class SplitGraph:
    """The parent module (calls the pieces in order) and its pieces, in call order."""

    parent: fx.GraphModule
    pieces: tuple[Piece, ...]

    @property
    def num_segments(self) -> int:
        """Pieces captured as graphs."""
        return sum(p.captured for p in self.pieces)


def split_graph(module: fx.GraphModule, eager: Mapping[fx.Node, object]) -> SplitGraph:
    """Partition `module` at the nodes of `eager` (runs of capturable nodes become segments)."""
    partition: dict[fx.Node, int] = {}
    runs: list[list[fx.Node]] = []
    previous: bool | None = None
    for node in module.graph.nodes:
        if node.op not in _CALLS:
            continue
        captured = node not in eager
        if captured is not previous:
            runs.append([])
            previous = captured
        runs[-1].append(node)
        partition[node] = len(runs) - 1
    parent = split_module(module, module, lambda node: partition[node], keep_original_order=True)
    pieces = tuple(
        Piece(f"submod_{i}", run[0] not in eager, run[0].name, run[-1].name, len(run))
        for i, run in enumerate(runs)
    )
    for piece in pieces:
        assert isinstance(getattr(parent, piece.name), torch.nn.Module), piece.name
    return SplitGraph(parent, pieces)
