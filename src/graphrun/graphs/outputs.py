"""Static outputs: one set at the top rung that every rung's graph copies its outputs into.

The structure and sizes are learned from one eager run. Every rung's graph ends by copying the callable's
outputs into leading-row views of these buffers, so output memory is O(top rung), and a call gets views
sliced to its batch. Capture, verification and the runner's call path all read outputs through here.
"""

from __future__ import annotations

from typing import Any

import torch

from graphrun.graphs.backends import Backend
from graphrun.graphs.buffers import Kind
from graphrun.graphs.failure import OutputShapeError
from graphrun.graphs.pytree import StructureMismatch, TreeSpec, spec_of


class StaticOutputs:
    """The output structure and its buffers, sized at the top rung from one run at `rung` rows."""

    def __init__(self, out: Any, rung: int, top: int, backend: Backend) -> None:
        self.spec: TreeSpec = spec_of(out)
        self.slots: list[tuple[int, Kind, int | None, Any]] = []  # (leaf index, kind, dim, buffer/value)
        self.batched: list[tuple[int, int]] = []  # (leaf index, batch dim) to narrow for n < rung
        for i, leaf in enumerate(self.spec.flatten(out)):
            if isinstance(leaf, torch.Tensor):
                batched = leaf.dim() > 0 and leaf.shape[0] == rung
                shape = (top, *leaf.shape[1:]) if batched else tuple(leaf.shape)
                # plain tensors even under inference mode: callers may use outputs in autograd later
                with torch.inference_mode(False):
                    buf = torch.empty(shape, dtype=leaf.dtype, device=leaf.device)
                self.slots.append((i, Kind.BATCHED if batched else Kind.SHARED, 0 if batched else None, buf))
                if batched:
                    self.batched.append((i, 0))
            else:
                self.slots.append((i, Kind.STATIC, None, leaf))
        register = getattr(backend, "register_static", None)
        if register is not None:
            register([b for _, kind, _, b in self.slots if kind is not Kind.STATIC])

    @property
    def immutable(self) -> bool:
        """True when the output is one leaf or a tuple of leaves: safe to hand out the same object twice."""
        root = self.spec.root
        return root.kind == "leaf" or (root.kind == "tuple" and all(c.kind == "leaf" for c in root.children))

    def rung_outputs(self, rung: int) -> list[Any]:
        """The static output leaves a replay of `rung` writes (batched ones narrowed to the rung)."""
        leaves: list[Any] = [None] * self.spec.num_leaves
        for i, kind, dim, buf in self.slots:
            leaves[i] = buf.narrow(dim, 0, rung) if kind is Kind.BATCHED else buf
        return leaves

    def sliced_outputs(self, rung: int, n: int) -> list[Any]:
        """The static output leaves of `rung` as a call of n rows sees them (batched ones sliced to n)."""
        leaves = self.rung_outputs(rung)
        for i, dim in self.batched:
            leaves[i] = leaves[i].narrow(dim, 0, n)
        return leaves

    def check(self, out: Any, rung: int) -> list[Any]:
        """Flatten one run's outputs and check they fit the static outputs; raise OutputShapeError if not."""
        try:
            leaves = self.spec.flatten(out)
        except (StructureMismatch, KeyError, IndexError, TypeError):
            raise OutputShapeError(
                f"outputs at batch {rung} have another structure than at the top rung"
            ) from None
        for i, kind, dim, buf in self.slots:
            leaf = leaves[i]
            if kind is Kind.STATIC:
                if isinstance(leaf, torch.Tensor) or leaf != buf:
                    raise OutputShapeError(
                        f"non-tensor output {i} changed between rungs: {buf!r} vs {leaf!r}"
                    )
                continue
            want = buf.narrow(dim, 0, rung).shape if kind is Kind.BATCHED else buf.shape
            if not isinstance(leaf, torch.Tensor) or leaf.shape != want or leaf.dtype != buf.dtype:
                got = tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
                raise OutputShapeError(f"output {i} at batch {rung} is {got}, expected {tuple(want)}")
        return list(leaves)
