"""A model's inputs and outputs as OrtRunner binds them, and the check of one call against them.

A tensor whose first declared dim is symbolic (a name, or unknown) is batched: calls may vary it, and
it is padded up to the rung. A tensor whose first dim is a fixed number is not batched: it is copied
whole. Every other dim is fixed by the example inputs (the rung's buffers have one shape per rung), so a
call whose non-batch dims differ from the example's is refused, naming the input and the shape wanted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from graphrun.errors import ConfigError, GraphInputError
from graphrun.ort.dtypes import torch_dtype


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output: its name, dtype, shape without the batch dim (or whole), batched."""

    name: str
    dtype: torch.dtype
    row_shape: tuple[int, ...]
    batched: bool

    def shape(self, batch_size: int) -> tuple[int, ...]:
        """The full shape at `batch_size` (the row shape itself when not batched)."""
        return (batch_size, *self.row_shape) if self.batched else self.row_shape


def _batched(declared: Sequence[Any]) -> bool:
    return len(declared) > 0 and not isinstance(declared[0], int)


def input_specs(session: Any, example: Sequence[torch.Tensor]) -> tuple[TensorSpec, ...]:
    """The session's inputs, in order, shaped by the example tensors (one per input, same order)."""
    args = session.get_inputs()
    if len(example) != len(args):
        names = [a.name for a in args]
        raise ConfigError(f"the model takes {len(args)} inputs {names}, got {len(example)} example tensors")
    specs = []
    for arg, tensor in zip(args, example, strict=True):
        dtype = torch_dtype(arg.type, arg.name)
        batched = _batched(arg.shape)
        _check_example(arg.name, list(arg.shape), dtype, tensor)
        specs.append(
            TensorSpec(arg.name, dtype, tuple(tensor.shape[1:] if batched else tensor.shape), batched)
        )
    if not any(s.batched for s in specs):
        raise ConfigError(
            "no model input has a dynamic first dim, so there is no batch to pad: export the model with a "
            "dynamic batch dim (graphrun.ort.export_onnx does)"
        )
    return tuple(specs)


def _check_example(name: str, declared: list[Any], dtype: torch.dtype, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ConfigError(f"example for input {name!r} must be a tensor, got {type(tensor).__name__}")
    if tensor.dtype != dtype:
        raise ConfigError(f"example for input {name!r} has dtype {tensor.dtype}, the model takes {dtype}")
    fixed_ok = all(not isinstance(d, int) or d == n for d, n in zip(declared, tensor.shape, strict=False))
    if tensor.dim() != len(declared) or not fixed_ok:
        raise ConfigError(
            f"example for input {name!r} has shape {tuple(tensor.shape)}, the model declares {declared}"
        )


def output_specs(session: Any, outputs: Sequence[torch.Tensor], batch_size: int) -> tuple[TensorSpec, ...]:
    """The session's outputs, shaped by one run's outputs at `batch_size`."""
    specs = []
    for arg, tensor in zip(session.get_outputs(), outputs, strict=True):
        dtype = torch_dtype(arg.type, arg.name)
        batched = _batched(arg.shape)
        if batched and (tensor.dim() == 0 or tensor.shape[0] != batch_size):
            raise ConfigError(
                f"output {arg.name!r} declares a dynamic first dim but has shape {tuple(tensor.shape)} "
                f"at batch size {batch_size}: OrtRunner slices outputs by their first dim"
            )
        specs.append(
            TensorSpec(arg.name, dtype, tuple(tensor.shape[1:] if batched else tensor.shape), batched)
        )
    return tuple(specs)


def call_tensors(
    specs: Sequence[TensorSpec], args: Sequence[Any], kwargs: Mapping[str, Any], device: torch.device
) -> tuple[tuple[torch.Tensor, ...], int]:
    """A call's tensors in model input order, checked, and its batch size; GraphInputError names a fault."""
    names = [s.name for s in specs]
    if len(args) > len(specs):
        raise GraphInputError(f"got {len(args)} positional inputs, the model takes {len(specs)}: {names}")
    given: dict[str, Any] = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in names:
            raise GraphInputError(f"unknown input name {key!r}; the model's inputs are {names}")
        if key in given:
            raise GraphInputError(f"input {key!r} given both by position and by name")
        given[key] = value
    missing = [n for n in names if n not in given]
    if missing:
        raise GraphInputError(f"missing input(s) {missing}; the model's inputs are {names}")
    tensors = tuple(_checked(spec, given[spec.name], device) for spec in specs)
    return tensors, _batch_size(specs, tensors)


def _checked(spec: TensorSpec, value: Any, device: torch.device) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise GraphInputError(f"input {spec.name!r} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype != spec.dtype:
        raise GraphInputError(
            f"input {spec.name!r} has dtype {value.dtype}, the model takes {spec.dtype}; "
            f"cast it with .to({spec.dtype})"
        )
    if value.device != device:
        raise GraphInputError(f"input {spec.name!r} is on {value.device}, the runner's buffers on {device}")
    rows = tuple(value.shape[1:]) if spec.batched else tuple(value.shape)
    if rows != spec.row_shape or (spec.batched and value.dim() == 0):
        want = f"(batch, {', '.join(map(str, spec.row_shape))})" if spec.batched else str(spec.row_shape)
        raise GraphInputError(f"input {spec.name!r} has shape {tuple(value.shape)}, the runner takes {want}")
    return value


def _batch_size(specs: Sequence[TensorSpec], tensors: Sequence[torch.Tensor]) -> int:
    sizes = {s.name: t.shape[0] for s, t in zip(specs, tensors, strict=True) if s.batched}
    if len(set(sizes.values())) > 1:
        raise GraphInputError(f"batched inputs disagree on the batch size: {sizes}")
    batch_size = next(iter(sizes.values()))
    if batch_size < 1:
        raise GraphInputError(f"batch size must be >= 1, got {batch_size}")
    return int(batch_size)
