"""A callable's static input layout: the ladder, one slot per input leaf, and the copy-in of a call's rows.

Built once from the example inputs and the options. The input structure, the slots (static buffers sized
at the top rung, with a leading-row view per rung) and the pad policy never change afterwards; only the
buffers' contents do. The runner's call path, capture and verification all copy rows in through here,
so a verified padded replay pads exactly as a real call does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from graphrun.errors import ConfigError
from graphrun.graphs.buffers import Kind, Slot, make_input_slot, pad_rows
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

    def copy_in(self, leaves: Sequence[Any], n: int, rung: int) -> None:
        """Copy a call's leaves of batch n into the static buffers of `rung` and pad rows n..rung.

        On the call path: a leaf that already is the static view (zero-copy calls) is not copied.
        """
        pad = self.pad
        for slot in self.batched:
            view = slot.views[rung]
            leaf = leaves[slot.index]
            if leaf is not view and leaf.data_ptr() != slot.view_ptrs[rung]:
                if leaf.requires_grad:  # copy the values only: a static buffer records no history
                    leaf = leaf.detach()
                if n == rung:
                    view.copy_(leaf)
                else:
                    view.narrow(slot.dim, 0, n).copy_(leaf)  # type: ignore[arg-type]
            if n != rung:
                pad_rows(view, slot.dim, n, pad)  # type: ignore[arg-type]
        for slot in self.shared:
            leaf = leaves[slot.index]
            if leaf is not slot.buffer:
                slot.buffer.copy_(leaf.detach() if leaf.requires_grad else leaf)  # type: ignore[union-attr]
        for slot in self.scalar_slots:
            slot.buffer.fill_(leaves[slot.index])  # type: ignore[union-attr]


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
