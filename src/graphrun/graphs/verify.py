"""Checking a captured graph against eager, at its own size and padded: fresh inputs, dtype tolerances.

Random inputs follow the example's statistics (float mean/std, integer range), so index-like inputs
stay valid indices and a frozen branch or a stale address shows up as a mismatch. The padded check
replays a smaller batch padded up to the rung and compares it with eager at the real batch size: padding
is only correct for a function whose rows are independent, and this is where that assumption is tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from graphrun.graphs.backends import CapturedGraph
from graphrun.graphs.buffers import Kind, Slot
from graphrun.graphs.outputs import StaticOutputs
from graphrun.graphs.pytree import StructureMismatch
from graphrun.graphs.spec import CaptureSpec

VERIFY_SEED = 0x6A7
INTEGER_REDRAWS = 2  # extra draws before an integer-only padded mismatch counts (see Verifier)

# (rtol, atol) per dtype: replay runs the same kernels as eager, so these are loose on purpose only for
# low-precision types where a different kernel choice per shape can change rounding.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


HALF_DTYPES = (torch.float16, torch.bfloat16)


def random_like(example: torch.Tensor, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """A fresh tensor of `shape` drawn to resemble `example` (never all zeros for float inputs)."""
    device = example.device
    if example.dtype == torch.bool:
        return torch.rand(shape, generator=generator).lt(0.5).to(device)
    if example.is_floating_point():
        ex = example.detach().float()
        std = float(ex.std()) if ex.numel() > 1 else 1.0
        mean = float(ex.mean()) if ex.numel() else 0.0
        std = std if std > 0 and std == std else 1.0
        out = torch.randn(shape, generator=generator) * std + mean
        return out.to(device=device, dtype=example.dtype)
    if example.is_complex():
        raise TypeError("complex inputs are not supported by verification; pass verify=False")
    lo = int(example.min()) if example.numel() else 0
    hi = int(example.max()) if example.numel() else 1
    return torch.randint(lo, hi + 1, tuple(shape), generator=generator).to(device=device, dtype=example.dtype)


def mismatch(
    got: torch.Tensor, want: torch.Tensor, tolerance: tuple[float, float] | None = None
) -> str | None:
    """None if `got` matches `want` within the dtype tolerance, else a one-line description.

    float16/bfloat16 under the default tolerance also pass when every row (dim 0) is within rtol in
    relative L2 norm: a deep network's outputs round differently when the graph's batch size picks other
    GEMM tiles than eager's (a 28-layer bf16 LLM's hidden states differ by 4-6 units in the last place
    here and there on an H100), while padding rows that leak into real ones move whole rows. The cost:
    a coupling that moves a row by less than rtol of its norm passes in half precision."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"shape/dtype {tuple(got.shape)}:{got.dtype} != eager {tuple(want.shape)}:{want.dtype}"
    if not got.is_floating_point():
        bad = int((got != want).sum())
        return None if bad == 0 else f"{bad} of {got.numel()} elements differ from eager"
    rtol, atol = tolerance or TOLERANCES.get(got.dtype, (1e-4, 1e-5))
    g, w = got.double(), want.double()
    if torch.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
        return None
    diff = (g - w).abs().nan_to_num(float("inf"))
    if tolerance is None and got.dtype in HALF_DTYPES and got.dim() >= 1 and got.numel():
        worst = _worst_row_error(g, w)
        if worst <= rtol:
            return None
        return (
            f"max abs diff {float(diff.max()):.3g} > atol {atol} + rtol {rtol}, and a row's relative "
            f"error {worst:.3g} > {rtol} (vs eager)"
        )
    return f"max abs diff {float(diff.max()):.3g} > atol {atol} + rtol {rtol} (vs eager)"


def _worst_row_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest ||got_r - want_r|| / ||want_r|| over the rows r of dim 0 (inf where NaNs disagree)."""
    if not torch.equal(got.isnan(), want.isnan()):
        return float("inf")
    g, w = (t.nan_to_num(0.0).reshape(t.shape[0], -1) for t in (got, want))
    err = (g - w).norm(dim=1) / w.norm(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return float(err.max())


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The first output that differed from eager; integer_only: no float output differed."""

    detail: str
    integer_only: bool


class Verifier:
    """Replays one captured rung on fresh inputs of n rows and compares the outputs with eager at n.

    n == rung is the full-size check. n < rung is the padded check: the n rows are copied in and padded
    exactly as a real call pads them (the runner's pad policy), the graph replays, and its outputs,
    sliced back to n rows, must equal eager run on the n rows alone (within the dtype tolerance). A
    function whose rows depend on each other (a batch mean, batch-norm in training, softmax over the
    batch) fails it; so does one whose eager run raises at n (a replay would answer where eager refuses).

    Inputs of n rows come from the options' `verify_inputs(n, generator)` when the caller gave one: it
    is called with the real batch size n, so it must return valid inputs for every batch size up to the
    top rung, not only for the rungs. Otherwise they are drawn at random like the example (random_like).

    Integer outputs (token ids, indices) have no tolerance, yet an integer computed from floats (an
    argmax) can flip when eager at n and the graph at the rung run different kernels for their shapes
    (GPU libraries pick kernels by batch size) and round differently. So when only integer outputs
    differ, the verdict is confirmed at the rung's own shape: with pad="repeat" and n >= 2, the graph
    replays the same rows padded with copies of the first row instead of the last; the same kernels
    then run, so any change in the real rows' outputs comes from the padding rows, which is coupling.
    Without that option (other pads, n == 1) the check is redrawn, and counts only if every draw
    differs: rounding flips are rare per draw, coupling is systematic. The cost: an integer output that
    depends on the batch size alone (not on the other rows' values) passes.
    """

    def __init__(self, spec: CaptureSpec, outputs: StaticOutputs) -> None:
        self._spec = spec
        self._outputs = outputs
        self._tolerance = spec.options.tolerance
        self._verify_inputs = spec.options.verify_inputs

    def check(self, graph: CapturedGraph, rung: int, n: int, seed: int) -> Mismatch | None:
        """Replay `graph` (captured at `rung`) on n fresh rows, padded when n < rung; the first mismatch."""
        return self._check_seeded(graph, rung, n, seed)[0]

    def check_padded(self, graph: CapturedGraph, rung: int, n: int) -> str | None:
        """The padded check at n < rung; integer-only mismatches are confirmed first (class docstring)."""
        found: Mismatch | None = None
        for draw in range(1 + INTEGER_REDRAWS):
            seed = VERIFY_SEED + 7919 * n + rung + 104729 * draw
            found, leaves = self._check_seeded(graph, rung, n, seed)
            if found is None or not found.integer_only:
                break
            if n >= 2 and self._spec.inputs.pad == "repeat":
                if self._padding_changes_rows(graph, rung, n, leaves):
                    found = Mismatch(f"{found.detail}, and they move with the padding rows", False)
                else:  # same graph, other padding rows, same outputs: eager differed by rounding only
                    found = None
                break
        return None if found is None else f"batch {n} padded to {rung}: {found.detail}"

    def _check_seeded(
        self, graph: CapturedGraph, rung: int, n: int, seed: int
    ) -> tuple[Mismatch | None, list[Any]]:
        leaves = self._draw(n, torch.Generator().manual_seed(seed))
        if isinstance(leaves, str):
            return Mismatch(leaves, False), []
        return self._check_leaves(graph, rung, n, leaves), leaves

    def _check_leaves(self, graph: CapturedGraph, rung: int, n: int, leaves: list[Any]) -> Mismatch | None:
        args, kwargs = self._spec.inputs.in_spec.unflatten(leaves)
        try:
            want = self._outputs.check(self._spec.fn(*args, **kwargs), n)
        except Exception as exc:  # eager raises where a padded replay would answer: never replay that
            return Mismatch(f"verification run failed: eager at batch {n} raised {_named(exc)}", False)
        try:
            got = self._replay(graph, rung, n, leaves)
        except Exception as exc:
            return Mismatch(f"verification run failed: replay raised {_named(exc)}", False)
        return self._compare(got, want)

    def _replay(self, graph: CapturedGraph, rung: int, n: int, leaves: Sequence[Any]) -> list[Any]:
        """Copy n rows in (padded as a call pads them), replay, return the outputs a call of n would see."""
        self._spec.inputs.copy_in(leaves, n, rung)
        graph.replay()
        self._spec.backend.synchronize()
        return self._outputs.sliced_outputs(rung, n)

    def _padding_changes_rows(self, graph: CapturedGraph, rung: int, n: int, leaves: list[Any]) -> bool:
        """Replay n rows padded with their last row, then with their first: do the real rows' outputs move?"""
        first = [
            t.clone() if isinstance(t, torch.Tensor) else t for t in self._replay(graph, rung, n, leaves)
        ]
        padded = [
            _pad_with_first_row(leaf, slot.dim, rung) if slot.kind is Kind.BATCHED else leaf
            for leaf, slot in zip(leaves, self._spec.inputs.slots, strict=True)
        ]
        self._replay(graph, rung, rung, padded)  # a full rung: the runner pads nothing
        second = self._outputs.sliced_outputs(rung, n)
        return any(
            isinstance(a, torch.Tensor) and not torch.equal(a, b) for a, b in zip(first, second, strict=True)
        )

    def _draw(self, n: int, gen: torch.Generator) -> list[Any] | str:
        inputs = self._spec.inputs
        if self._verify_inputs is None:
            return [_random_leaf(slot, n, gen) for slot in inputs.slots]
        args, kwargs = tuple(self._verify_inputs(n, gen)), dict[str, Any]()
        try:
            leaves = list(inputs.in_spec.flatten((args, kwargs)))
        except (StructureMismatch, KeyError, IndexError, TypeError):
            return "verify_inputs returned another structure than the example inputs"
        for slot in inputs.slots:
            leaf, dim = leaves[slot.index], slot.dim
            if (
                dim is not None
                and isinstance(leaf, torch.Tensor)
                and leaf.dim() > dim
                and leaf.shape[dim] != n
            ):
                got = leaf.shape[dim]
                return (
                    f"verify_inputs({n}, generator) gave {slot.path} a batch of {got}; it must give {n} rows"
                )
        return leaves

    def _compare(self, got: Sequence[Any], want: Sequence[Any]) -> Mismatch | None:
        first: Mismatch | None = None
        for i, leaf in enumerate(got):
            if not isinstance(leaf, torch.Tensor):
                continue
            problem = mismatch(leaf, want[i], self._tolerance)
            if problem is None:
                continue
            exact = leaf.is_floating_point() or leaf.is_complex() or leaf.shape != want[i].shape
            if exact:
                return Mismatch(f"output {i}: {problem}", False)
            first = first or Mismatch(f"output {i}: {problem}", True)
        return first


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _pad_with_first_row(leaf: torch.Tensor, dim: int | None, rung: int) -> torch.Tensor:
    """`leaf` grown to `rung` rows along `dim` with copies of its first row."""
    assert dim is not None
    repeats = [1] * leaf.dim()
    repeats[dim] = rung - leaf.shape[dim]
    return torch.cat([leaf, leaf.narrow(dim, 0, 1).repeat(repeats)], dim)


def _random_leaf(slot: Slot, n: int, gen: torch.Generator) -> Any:
    if slot.kind is Kind.BATCHED:
        assert slot.buffer is not None and slot.dim is not None
        shape = list(slot.buffer.shape)
        shape[slot.dim] = n
        return random_like(slot.buffer, shape, gen)
    if slot.kind is Kind.SHARED:
        assert slot.buffer is not None
        return random_like(slot.buffer, slot.buffer.shape, gen)
    if slot.kind is Kind.SCALAR:
        assert slot.buffer is not None
        return slot.value(slot.buffer.item())
    return slot.value
