"""A callable's static input layout: the ladder, one slot per input leaf, and the copy-in of a call's rows.

Built once from the example inputs and the options. The input structure, the slots (static buffers sized
at the top rung, with a leading-row view per rung) and the pad policy never change afterwards; only the
buffers' contents do. The runner's call path, capture and verification all copy rows in with the
operations built here (copy_ops, fill_ops, pad_ops), so a verified padded replay pads exactly as a real
call does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from graphrun.errors import ConfigError, GraphInputError
from graphrun.graphs.buffers import (
    Kind,
    Slot,
    check_scalar,
    check_static,
    check_tensor,
    make_input_slot,
)
from graphrun.graphs.layout import leaf_batch_dims, leaf_paths
from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.pytree import TreeSpec, spec_of
from graphrun.graphs.sizes import default_ladder, normalize_ladder


@dataclass(frozen=True, slots=True)
class InputLayout:
    """The input structure, its slots in flatten order (grouped by kind too), the ladder and the pad."""

    in_spec: TreeSpec  # structure of (args, kwargs)
    slots: tuple[Slot, ...]
    sizes: tuple[int, ...]  # the ladder, ascending
    pad: str | float | int | None
    batched: tuple[Slot, ...]
    shared: tuple[Slot, ...]
    scalar_slots: tuple[Slot, ...]
    static_slots: tuple[Slot, ...]

    @classmethod
    def build(cls, args: tuple[Any, ...], kwargs: dict[str, Any], options: RunnerOptions) -> InputLayout:
        """Read the example inputs, choose the ladder, allocate one static buffer set at its top rung."""
        root = (args, kwargs)
        in_spec = spec_of(root)
        leaves = in_spec.flatten(root)
        dims = leaf_batch_dims(options.batch_dims, options.kwarg_batch_dims, args, kwargs)
        paths = leaf_paths(args, kwargs)
        example_batch = _example_batch(leaves, dims, paths)
        sizes = _ladder(options, example_batch)
        top, scalars = sizes[-1], options.scalars
        slots = tuple(
            make_input_slot(i, path, leaf, dim if isinstance(leaf, torch.Tensor) else None, top, scalars)
            for i, (leaf, dim, path) in enumerate(zip(leaves, dims, paths, strict=True))
        )
        for slot in slots:
            if slot.kind is Kind.BATCHED:
                assert slot.buffer is not None and slot.dim is not None
                slot.views = {r: slot.buffer.narrow(slot.dim, 0, r) for r in sizes}
                slot.view_ptrs = {r: view.data_ptr() for r, view in slot.views.items()}
        return cls(
            in_spec,
            slots,
            sizes,
            options.pad,
            tuple(s for s in slots if s.kind is Kind.BATCHED),
            tuple(s for s in slots if s.kind is Kind.SHARED),
            tuple(s for s in slots if s.kind is Kind.SCALAR),
            tuple(s for s in slots if s.kind is Kind.STATIC),
        )

    @property
    def device(self) -> torch.device:
        """Where the batched inputs live (the first one's device)."""
        buffer = self.batched[0].buffer
        return buffer.device if buffer is not None else torch.device("cpu")

    def static_buffers(self) -> list[torch.Tensor]:
        """Every input buffer (batched, shared and scalar), for backends that track static storage."""
        return [s.buffer for s in self.slots if s.buffer is not None]

    def rung_leaves(self, rung: int) -> list[Any]:
        """The leaves the callable sees when it runs on the static buffers of `rung`."""
        return [
            s.views[rung] if s.kind is Kind.BATCHED else s.buffer if s.buffer is not None else s.value
            for s in self.slots
        ]

    def call_leaves(self, rung: int, n: int) -> list[Any]:
        """The leaves of a call of n rows whose tensors are the static buffers of `rung` (zero-copy calls)."""
        leaves: list[Any] = []
        for slot in self.slots:
            if slot.kind is Kind.BATCHED:
                assert slot.dim is not None
                leaves.append(slot.views[rung].narrow(slot.dim, 0, n))
            elif slot.kind is Kind.SHARED:
                leaves.append(slot.buffer)
            elif slot.kind is Kind.STATIC:
                leaves.append(slot.value)
            else:  # a dynamic scalar: its current value, of its Python type
                assert slot.buffer is not None
                leaves.append(slot.value(slot.buffer.item()))
        return leaves

    def validate(self, leaves: Sequence[Any]) -> int:
        """A call's batch size, after checking every leaf against its slot; raise GraphInputError (or
        StaticValueError) naming the first leaf that does not fit."""
        first = self.batched[0]
        leaf = leaves[first.index]
        if not isinstance(leaf, torch.Tensor) or leaf.dim() != first.ndim:
            check_tensor(first, leaf, -1)
        n = int(leaf.shape[first.dim])
        if n == 0:
            raise GraphInputError(f"{first.path}: batch size is 0; call with at least one row")
        in_ladder = n < len(first.shape_for)
        for slot in self.batched:
            if not (in_ladder and _fits(leaves[slot.index], slot, slot.shape_for[n] if in_ladder else None)):
                check_tensor(slot, leaves[slot.index], n)  # raises, or passes: n above the ladder
        for slot in self.shared:
            if not _fits(leaves[slot.index], slot, slot.shape):
                check_tensor(slot, leaves[slot.index], n)
        for slot in self.static_slots:
            check_static(slot, leaves[slot.index])
        for slot in self.scalar_slots:
            check_scalar(slot, leaves[slot.index])
        return n

    def copy_ops(self, n: int, rung: int) -> tuple[CopyOp, ...]:
        """(leaf index, destination, its data_ptr() or SHARED_PTR) per tensor leaf: a batched leaf goes
        to rows [0, n) of its rung's view, a shared one to its whole buffer."""
        ops: list[CopyOp] = []
        for slot in self.batched:
            assert slot.dim is not None
            view = slot.views[rung]
            ops.append((slot.index, view if n == rung else view.narrow(slot.dim, 0, n), slot.view_ptrs[rung]))
        for slot in self.shared:
            assert slot.buffer is not None
            ops.append((slot.index, slot.buffer, SHARED_PTR))
        return tuple(ops)

    def fill_ops(self) -> tuple[FillOp, ...]:
        """(leaf index, the 0-d buffer's fill_) per dynamic scalar."""
        return tuple((s.index, s.buffer.fill_) for s in self.scalar_slots)  # type: ignore[union-attr]

    def pad_ops(self, n: int, rung: int) -> tuple[PadOp, ...]:
        """(method, argument) filling rows [n, rung) of each batched buffer: a copy of row n-1 ("repeat"),
        a fill value; nothing for pad=None or n == rung."""
        pad = self.pad
        if pad is None or n == rung:
            return ()
        ops: list[PadOp] = []
        for slot in self.batched:
            assert slot.dim is not None
            view = slot.views[rung]
            rest = view.narrow(slot.dim, n, rung - n)
            if isinstance(pad, str):  # "repeat" ("forbid" never pads: no batch is served by a larger rung)
                ops.append((rest.copy_, view.narrow(slot.dim, n - 1, 1).expand_as(rest)))
            else:
                ops.append((rest.fill_, pad))
        return tuple(ops)

    def copy_in(self, leaves: Sequence[Any], n: int, rung: int) -> None:
        """Copy a call's leaves of batch n into the static buffers of `rung` and pad rows n..rung.

        The same operations a runner's call runs (it keeps them ready per batch size: call_plan.py).
        """
        write_inputs(leaves, self.copy_ops(n, rung), self.fill_ops(), self.pad_ops(n, rung))


CopyOp = tuple[int, torch.Tensor, int]
FillOp = tuple[int, Callable[[Any], object]]
PadOp = tuple[Callable[[Any], object], Any]
SHARED_PTR = -1  # a shared leaf is copied unless it is the buffer itself (no data_ptr() equals this)


def write_inputs(
    leaves: Sequence[Any], copies: Sequence[CopyOp], fills: Sequence[FillOp], pads: Sequence[PadOp]
) -> None:
    """Run a call's copy-in: copy each leaf unless it already is its destination (a zero-copy call),
    fill the scalars, pad. Values only: a static buffer records no autograd history."""
    for i, dst, ptr in copies:
        leaf = leaves[i]
        if leaf is not dst and leaf.data_ptr() != ptr:
            dst.copy_(leaf.detach() if leaf.requires_grad else leaf)
    for i, fill in fills:
        fill(leaves[i])
    for write, arg in pads:
        write(arg)


def _fits(leaf: Any, slot: Slot, shape: Any) -> bool:
    """Whether a leaf is a tensor of the slot's dtype and device and of `shape`."""
    try:
        return bool(leaf.dtype is slot.dtype and leaf.device == slot.device and leaf.shape == shape)
    except AttributeError:
        return False


def _example_batch(leaves: tuple[Any, ...], dims: list[int | None], paths: list[str]) -> int:
    """The one batch size every batched example leaf agrees on."""
    batched = [
        (path, leaf.shape[d])
        for leaf, d, path in zip(leaves, dims, paths, strict=True)
        if isinstance(leaf, torch.Tensor) and d is not None
    ]
    if not batched:
        raise ConfigError("no tensor input has a batch dimension: pass batch_dims (e.g. batch_dims=0)")
    batch_sizes = {size for _, size in batched}
    if len(batch_sizes) != 1:
        listing = ", ".join(f"{path}: {size}" for path, size in batched)
        raise ConfigError(
            f"example inputs disagree on the batch size ({listing}); mark inputs without a batch "
            "dimension with batch_dims=(0, None, ...) or kwarg_batch_dims={'name': None}"
        )
    example_batch = int(batch_sizes.pop())
    if example_batch < 1:
        raise ConfigError("example inputs must have a batch size of at least 1")
    return example_batch


def _ladder(options: RunnerOptions, example_batch: int) -> tuple[int, ...]:
    """The explicit sizes (checked against max_batch_size by the options), else the default ladder."""
    if options.sizes is not None:
        return normalize_ladder(options.sizes)
    top = options.max_batch_size
    return default_ladder(top if top is not None else example_batch)
