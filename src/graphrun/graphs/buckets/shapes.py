"""Bucketed calls' tensors: read a call's sizes, pad every bucketed dim (and the mask), slice outputs back.

Inputs are named tensors, batched along axis 0. Padding writes `pad_value` into the new positions of
every input, and 0 into the mask's, so a model that honours its mask sees the padded positions as
absent; outputs are sliced back along the axes that follow each dim (declared, or inferred: infer_axes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from graphrun.errors import ConfigError, GraphInputError
from graphrun.graphs.buckets.spec import BucketDim
from graphrun.graphs.pytree import TreeSpec, spec_of

Tensors = Mapping[str, torch.Tensor]
Sizes = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class OutputAxes:
    """The output structure and, per bucketed dim, (leaf index, axis) pairs to slice to the real size."""

    spec: TreeSpec
    per_dim: tuple[tuple[tuple[int, int], ...], ...]
    top_nbytes: int  # bytes of one output row with every dim at its top rung (buffer estimates)

    def slice_back(self, out: Any, sizes: Sizes, bucket: Sizes) -> Any:
        """`out` (a bucket's outputs) with every followed axis narrowed to the call's real size."""
        if sizes == bucket:
            return out
        leaves = list(self.spec.flatten(out))
        for d, pairs in enumerate(self.per_dim):
            if sizes[d] != bucket[d]:
                for leaf, axis in pairs:
                    leaves[leaf] = leaves[leaf].narrow(axis, 0, sizes[d])
        return self.spec.unflatten(leaves)


def sizes_of(dims: Sequence[BucketDim], inputs: Tensors) -> Sizes:
    """Each bucketed dim's size in a call; GraphInputError when inputs disagree or one is missing."""
    for name, t in inputs.items():
        if not isinstance(t, torch.Tensor):
            raise GraphInputError(f"input {name!r} must be a tensor, got {type(t).__name__}")
    return sizes_of_shapes(dims, {name: tuple(t.shape) for name, t in inputs.items()})


def sizes_of_shapes(dims: Sequence[BucketDim], shapes: Mapping[str, Sequence[int]]) -> Sizes:
    """sizes_of, from the inputs' shapes alone."""
    sizes = []
    for dim in dims:
        seen: dict[str, int] = {}
        for name, axis in dim.axes.items():
            shape = shapes.get(name)
            if shape is None:
                continue
            if len(shape) <= axis:
                raise GraphInputError(f"input {name!r} has shape {tuple(shape)}: no axis {axis} ({dim.name})")
            seen[name] = int(shape[axis])
        if not seen:
            raise GraphInputError(f"no input carries dim {dim.name!r}; pass one of {sorted(dim.axes)}")
        if len(set(seen.values())) > 1:
            raise GraphInputError(f"inputs disagree on dim {dim.name!r}: {seen}")
        size = next(iter(seen.values()))
        if size < 1:
            raise GraphInputError(f"dim {dim.name!r} has size 0 in {sorted(seen)}; call with at least one")
        sizes.append(size)
    return tuple(sizes)


def pad_axis(t: torch.Tensor, axis: int, size: int, value: float) -> torch.Tensor:
    """`t` grown along `axis` to `size` with `value`, or narrowed when it is longer."""
    have = t.shape[axis]
    if have >= size:
        return t if have == size else t.narrow(axis, 0, size)
    widths = [0, 0] * (t.dim() - 1 - axis) + [0, size - have]  # F.pad lists the last axis first
    return F.pad(t, widths, value=value)


def mask_like(example: torch.Tensor, batch: int, axes: Mapping[int, tuple[int, int]]) -> torch.Tensor:
    """A mask shaped like `example` at `batch` rows: 1 on real positions, 0 on padding.

    axes: axis -> (real size, padded size) for every bucketed dim the mask carries."""
    shape = [batch, *example.shape[1:]]
    for axis, (_, padded) in axes.items():
        shape[axis] = padded
    mask = torch.zeros(shape, dtype=example.dtype, device=example.device)
    index = [slice(None)] * len(shape)
    for axis, (real, _) in axes.items():
        index[axis] = slice(0, real)
    mask[tuple(index)] = 1
    return mask


def pad_inputs(
    dims: Sequence[BucketDim],
    mask: str | None,
    mask_example: torch.Tensor | None,
    inputs: Tensors,
    sizes: Sizes,
    bucket: Sizes,
) -> dict[str, torch.Tensor]:
    """The call's inputs padded from `sizes` to `bucket` along every dim, with the mask (built if absent)."""
    out = dict(inputs)
    for d, dim in enumerate(dims):
        if sizes[d] == bucket[d]:
            continue
        for name, axis in dim.axes.items():
            if name in out and name != mask:
                out[name] = pad_axis(out[name], axis, bucket[d], dim.pad_value)
    if mask is not None:
        carried = {dim.axes[mask]: (sizes[d], bucket[d]) for d, dim in enumerate(dims) if mask in dim.axes}
        given = inputs.get(mask)
        if given is None:
            assert mask_example is not None
            batch = next(iter(inputs.values())).shape[0]
            out[mask] = mask_like(mask_example, batch, carried)
        else:
            for axis, (_, padded) in carried.items():
                given = pad_axis(given, axis, padded, 0)
            out[mask] = given
    return out


def infer_axes(
    fn: Callable[..., Any],
    dims: Sequence[BucketDim],
    probe: Callable[[Sizes], dict[str, torch.Tensor]],
) -> OutputAxes:
    """Per dim, the output axes to slice: declared (BucketDim.output_axes), else inferred.

    Inferred from eager runs at one row: every dim at its top rung, then each dim with a declared-less
    axis once at another size (top - 1); an axis >= 1 whose length equals the dim's size in both runs
    follows it. A dim whose top rung is 1 has nothing to slice.
    """
    tops = tuple(dim.rungs[-1] for dim in dims)
    base = fn(**probe(tops))
    spec = spec_of(base)
    leaves = spec.flatten(base)
    per_dim = []
    for d, dim in enumerate(dims):
        if dim.output_axes is not None:
            bad = [i for i in dim.output_axes if not 0 <= i < len(leaves)]
            if bad:
                raise ConfigError(
                    f"dim {dim.name!r}: output_axes names leaves {bad}; outputs have {len(leaves)}"
                )
            per_dim.append(tuple(sorted(dim.output_axes.items())))
            continue
        if tops[d] < 2:
            per_dim.append(())
            continue
        other = spec.flatten(fn(**probe((*tops[:d], tops[d] - 1, *tops[d + 1 :]))))
        per_dim.append(_following(leaves, other, tops[d]))
    nbytes = sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))
    return OutputAxes(spec, tuple(per_dim), nbytes)


def _following(top: Sequence[Any], smaller: Sequence[Any], size: int) -> tuple[tuple[int, int], ...]:
    """(leaf, axis) pairs whose length is `size` in `top` and `size - 1` in `smaller`."""
    pairs = []
    for i, (a, b) in enumerate(zip(top, smaller, strict=True)):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() == b.dim():
            pairs += [(i, ax) for ax in range(1, a.dim()) if a.shape[ax] == size and b.shape[ax] == size - 1]
    return tuple(pairs)
