"""The collectives of one tensor-parallel decode step, found by running it, then timed alone in a graph.

What share of a TP step is communication? The step's own collectives are recorded while the eager step
runs once (a dispatch mode sees every `_c10d_functional` op the model issues: the vocab-parallel
embedding's all-reduce, two all-reduces per layer of the (batch, hidden) state, the LM head's logits
all-gather), so the count and shapes are the model's, never assumed. The same ops on buffers of the same
shapes and dtype, in the same order, through the same ParallelGroup calls, are then captured in one graph
and its replays timed like the step's: `time_ms / graph step` is the share. Inside the step the
collectives run on the compute stream between the kernels that feed them, so they overlap nothing and the
sum is a fair measure; what it leaves out is the wait for the slowest rank, which the step pays too.

The buffers start at 1 and the in-place sums grow with every replay; NCCL's time does not depend on the
values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from graphrun.graphs.backends import make_backend
from graphrun.llm.parallel.group import ParallelGroup

ALL_REDUCE = "all_reduce"
ALL_GATHER = "all_gather"
_OPS = {  # _c10d_functional op name -> which ParallelGroup call issues it
    "all_reduce_": ALL_REDUCE,
    "all_reduce": ALL_REDUCE,
    "all_gather_into_tensor": ALL_GATHER,
}


@dataclass(frozen=True, slots=True)
class Collective:
    """One collective of the step: which, and the shape and dtype of the tensor each rank passes."""

    kind: str  # ALL_REDUCE or ALL_GATHER
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * self.dtype.itemsize


class _Recorder(TorchDispatchMode):
    """Notes every functional collective that runs under it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Collective] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if func.namespace == "_c10d_functional" and name in _OPS:
            tensor = args[0]
            self.seen.append(Collective(_OPS[name], tuple(tensor.shape), tensor.dtype))
        return func(*args, **(kwargs or {}))


def record_collectives(step: Callable[[], object]) -> tuple[Collective, ...]:
    """Run `step` once (every rank must, together) and return the collectives it issued."""
    with _Recorder() as recorder:
        step()
    return tuple(recorder.seen)


def summary(collectives: tuple[Collective, ...]) -> dict[str, Any]:
    """Counts and bytes per kind, for the report."""
    out: dict[str, Any] = {}
    for kind in (ALL_REDUCE, ALL_GATHER):
        chosen = [c for c in collectives if c.kind == kind]
        out[kind] = {
            "count": len(chosen),
            "bytes_per_rank": sum(c.nbytes for c in chosen),
            "shapes": [list(shape) for shape in sorted({c.shape for c in chosen})],
        }
    return out


class CollectivesGraph:
    """`collectives` issued through `group` on buffers of their shapes, captured as one graph."""

    def __init__(
        self, group: ParallelGroup, collectives: tuple[Collective, ...], device: torch.device
    ) -> None:
        if not collectives:
            raise ValueError("no collectives to capture (one rank issues none)")
        self._group = group
        self._calls = [(c.kind, torch.ones(c.shape, dtype=c.dtype, device=device)) for c in collectives]
        self._backend = make_backend("cuda" if device.type == "cuda" else "sim", device)
        self._backend.warmup(self._body, 2)  # NCCL's lazy set-up happens before capture
        self._graph = self._backend.capture(self._body, "tp-collectives")

    def _body(self) -> None:
        for kind, buffer in self._calls:
            if kind == ALL_REDUCE:
                self._group.all_reduce(buffer)
            else:
                self._group.all_gather(buffer)

    def replay(self) -> None:
        self._graph.replay()

    def release(self) -> None:
        self._graph.release()
        self._calls.clear()


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
