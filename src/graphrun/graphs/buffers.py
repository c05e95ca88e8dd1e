"""Static input and output buffers: one set at the top rung, shared by every rung as leading views.

Memory is O(top rung), not O(sum of rungs). A call copies its rows into the rung's view, pads the rows
up to the rung (inputs.py has the operations), and gets back views of the static outputs sliced to its
batch. Hazard: those views alias
the static outputs and are overwritten by the next call (clone_outputs=True copies them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from graphrun.errors import GraphInputError, StaticValueError


class Kind(Enum):
    """How a leaf of the inputs or outputs is handled."""

    BATCHED = "batched"  # tensor with a batch dimension: rung views, copy rows, pad
    SHARED = "shared"  # tensor without one: copied whole every call
    SCALAR = "scalar"  # Python number turned into a 0-d static tensor (scalars="tensor")
    STATIC = "static"  # non-tensor constant frozen at capture (scalars="static", None, strings)


@dataclass(slots=True)
class Slot:
    """One leaf: its kind, the static buffer (if any), and the checks a call must pass."""

    index: int
    kind: Kind
    path: str  # e.g. "args[0]" or "kwargs['mask']", for error messages
    dim: int | None = None
    buffer: torch.Tensor | None = None
    value: Any = None
    dtype: torch.dtype | None = None
    device: torch.device | None = None
    ndim: int = 0
    tail: tuple[int, ...] = ()  # shape without the batch dimension
    shape: tuple[int, ...] = ()  # full shape (shared slots); a torch.Size once allocated
    shape_for: list[torch.Size] = field(default_factory=list)  # batch size n -> full shape (batched slots)
    views: dict[int, torch.Tensor] = field(default_factory=dict)  # rung -> rows [0, rung)
    view_ptrs: dict[int, int] = field(
        default_factory=dict
    )  # rung -> views[rung].data_ptr() (zero-copy check)


def batch_dim_tail(shape: Sequence[int], dim: int | None) -> tuple[int, ...]:
    """The shape with the batch dimension removed (the part every call must match)."""
    return tuple(shape) if dim is None else tuple(shape[:dim]) + tuple(shape[dim + 1 :])


def make_input_slot(index: int, path: str, example: Any, dim: int | None, top: int, scalars: str) -> Slot:
    """Allocate the static buffer for one input leaf (batched leaves sized at the top rung)."""
    if isinstance(example, torch.Tensor):
        slot = Slot(index, Kind.BATCHED if dim is not None else Kind.SHARED, path, dim=dim)
        slot.dtype, slot.device, slot.ndim = example.dtype, example.device, example.dim()
        slot.tail = batch_dim_tail(example.shape, dim)
        slot.buffer = _top_rung_buffer(example, dim, top) if dim is not None else example.detach().clone()
        slot.shape = example.shape
        if dim is not None:  # precomputed so the hot path compares one torch.Size per leaf
            slot.shape_for = [
                torch.Size((*example.shape[:dim], n, *example.shape[dim + 1 :])) for n in range(top + 1)
            ]
        return slot
    if scalars == "tensor" and isinstance(example, bool | int | float):
        return Slot(index, Kind.SCALAR, path, buffer=torch.tensor(example), value=type(example))
    return Slot(index, Kind.STATIC, path, value=example)


def _top_rung_buffer(example: torch.Tensor, dim: int, top: int) -> torch.Tensor:
    """A top-rung buffer filled by cycling the example's rows: valid data in every row from the start."""
    n = example.shape[dim]
    rows = torch.arange(top, device=example.device) % n
    return example.detach().index_select(dim, rows).contiguous()


def check_tensor(slot: Slot, leaf: Any, n: int) -> None:
    """Raise GraphInputError naming the argument if `leaf` cannot be copied into `slot`."""
    if not isinstance(leaf, torch.Tensor):
        raise GraphInputError(f"{slot.path}: expected a Tensor, got {type(leaf).__name__}")
    if leaf.dtype != slot.dtype:
        raise GraphInputError(f"{slot.path}: expected dtype {slot.dtype}, got {leaf.dtype}")
    if leaf.device != slot.device:
        raise GraphInputError(f"{slot.path}: expected a tensor on {slot.device}, got one on {leaf.device}")
    if leaf.dim() != slot.ndim:
        raise GraphInputError(f"{slot.path}: expected {slot.ndim} dimensions, got shape {tuple(leaf.shape)}")
    if batch_dim_tail(leaf.shape, slot.dim) != slot.tail:
        what = "non-batched dimensions" if slot.dim is not None else "shape (this input is not batched)"
        want_shape = "x".join(str(s) for s in slot.tail)
        raise GraphInputError(
            f"{slot.path}: {what} must equal the captured {want_shape}, got shape {tuple(leaf.shape)}"
        )
    if slot.dim is not None and leaf.shape[slot.dim] != n:
        raise GraphInputError(
            f"{slot.path}: batch size {leaf.shape[slot.dim]} differs from the other inputs' batch size {n}"
        )


def check_static(slot: Slot, leaf: Any) -> None:
    """A static (frozen) input must be called with its captured value."""
    if leaf is slot.value:
        return
    same = type(leaf) is type(slot.value) and leaf == slot.value
    if not same:
        raise StaticValueError(
            f"{slot.path}: the graph was captured with {slot.value!r}; got {leaf!r}. Non-tensor inputs are "
            "frozen at capture: pass a tensor, or build the runner with scalars='tensor' to make numbers "
            "dynamic"
        )


def check_scalar(slot: Slot, leaf: Any) -> None:
    """A dynamic scalar must stay a number of the captured Python type."""
    if type(leaf) is not slot.value:
        raise GraphInputError(f"{slot.path}: expected a {slot.value.__name__}, got {type(leaf).__name__}")
