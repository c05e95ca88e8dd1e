"""What a replayed call of one batch size does, worked out once so the call path only executes it.

A call of n rows on rung r checks its leaves against the expected shapes, copies each batched leaf
into rows [0, n) of its static buffer (unless it already is that buffer: zero-copy), copies shared
leaves whole and fills dynamic scalars, pads rows [n, r), replays, and returns the static outputs
sliced to n. Every view, bound method and expected shape those steps need depends only on (n, r), so
a CallPlan holds them ready: the call does no narrow(), no shape arithmetic and no lookup by kind.

Plans are made on a batch size's first call after its rung changed (plan_call; the runner keeps them
in a list indexed by batch size), not for the whole ladder up front: an engine's token ladder reaches
thousands of sizes, most of them never called.
Outputs: when the output is one tensor or a tuple of leaves (the caller cannot mutate the container)
and outputs are not cloned, the finished object is built once and handed out on every call; it
aliases the static outputs, as every replayed output does until the next call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from graphrun.graphs.buffers import Kind, Slot, check_scalar, check_static
from graphrun.graphs.inputs import CopyOp, FillOp, InputLayout, PadOp
from graphrun.graphs.outputs import StaticOutputs


@dataclass(frozen=True, slots=True)
class CallPlan:
    """One batch size's replay on its rung: checks, copies, padding, the replay and the outputs."""

    n: int
    rung: int
    # the first batched leaf (the one whose batch size picked this plan) checked inline by the runner
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    # (leaf index, shape, dtype, device) every other batched and shared leaf must have
    checks: tuple[tuple[int, torch.Size, torch.dtype, torch.device], ...]
    value_checks: tuple[tuple[Callable[[Slot, Any], None], Slot], ...]  # frozen values, scalar types: raise
    more_checks: bool  # whether accepts() has anything to check beyond the first leaf
    copies: tuple[CopyOp, ...]  # the copy-in, padding and scalar fills: InputLayout's operations
    fills: tuple[FillOp, ...]
    pads: tuple[PadOp, ...]
    replay: Callable[[], None]
    reuse_output: bool  # True: `output` is the finished result of every call
    output: Any
    out_leaves: tuple[Any, ...]  # the static output leaves sliced to n (rebuilt per call when not reused)
    unflatten: Callable[[Any], Any]
    clone_outputs: bool

    def accepts(self, leaves: Sequence[Any]) -> bool:
        """Whether a call's other leaves (all but the first batched one) have this plan's shapes, dtypes
        and devices; a frozen value or scalar type that differs raises, naming the input (as
        InputLayout.validate does)."""
        try:
            for i, shape, dtype, device in self.checks:
                leaf = leaves[i]
                if leaf.shape != shape or leaf.dtype is not dtype or leaf.device != device:
                    return False
        except AttributeError:  # not a tensor
            return False
        for check, slot in self.value_checks:
            check(slot, leaves[slot.index])
        return True

    def make_output(self) -> Any:
        """The call's output object, built afresh (a dict or list output, or clone_outputs=True)."""
        leaves: Any = self.out_leaves
        if self.clone_outputs:
            leaves = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        return self.unflatten(leaves)


def plan_call(
    n: int,
    rung: int,
    replay: Callable[[], None],
    inputs: InputLayout,
    outputs: StaticOutputs,
    clone_outputs: bool,
) -> CallPlan:
    """The plan of a call of n rows replayed on `rung` (whose graph `replay` runs)."""
    out_leaves = tuple(outputs.sliced_outputs(rung, n))
    unflatten = outputs.spec.unflatten
    reuse = not clone_outputs and outputs.immutable
    first, *checks = _checks(inputs, n)
    value_checks = (
        *((check_static, s) for s in inputs.static_slots),
        *((check_scalar, s) for s in inputs.scalar_slots),
    )
    return CallPlan(
        n,
        rung,
        *first[1:],
        tuple(checks),
        value_checks,
        bool(checks or value_checks),
        inputs.copy_ops(n, rung),
        inputs.fill_ops(),
        inputs.pad_ops(n, rung),
        replay,
        reuse,
        unflatten(out_leaves) if reuse else None,
        out_leaves,
        unflatten,
        clone_outputs,
    )


def _checks(inputs: InputLayout, n: int) -> list[tuple[int, torch.Size, torch.dtype, torch.device]]:
    """(leaf index, shape, dtype, device) of every tensor leaf, the first batched one first."""
    checks = []
    for slot in (*inputs.batched, *inputs.shared):
        shape = slot.shape_for[n] if slot.kind is Kind.BATCHED else torch.Size(slot.shape)
        assert slot.dtype is not None and slot.device is not None
        checks.append((slot.index, shape, slot.dtype, slot.device))
    return checks
