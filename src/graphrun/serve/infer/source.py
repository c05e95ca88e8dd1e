"""Where a served model comes from: a factory in an importable module, or a torch.export archive.

`--module pkg.mod:factory`: `factory()` returns a ModelSource, or `(module, example_inputs)` where the
example is one tensor, a tuple of tensors (named after forward's parameters) or a dict of named tensors
(passed by keyword). `--exported model.pt2`: exported.py. Either way the example fixes every other
dim, dtype and device, and one eager run on it names the outputs: "output" for a single tensor,
"output0".. for a tuple, a dict's own keys.

A ModelSource may also declare dynamic dims besides the batch (dims.py: which input axes carry a
sequence length, its rungs, its pad value, the output axes that follow it) and the mask input that marks
real positions; the model is then served in buckets over batch x those dims (bucketed.py).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from graphrun.errors import ConfigError
from graphrun.serve.infer.dims import DynamicDim
from graphrun.serve.infer.schema import TensorSpec

# torch dtype -> wire dtype; bfloat16 has no numpy dtype: it travels as float32 and is cast at the model
_WIRE = {
    torch.bool: "bool",
    torch.uint8: "uint8",
    torch.int8: "int8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.float16: "float16",
    torch.bfloat16: "float32",
    torch.float32: "float32",
    torch.float64: "float64",
}


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A callable and named example inputs (each with the batch in dim 0).

    keywords: call fn(**inputs) (a dict example), else fn(*inputs) in order. finite: inputs whose NaN or
    infinity a request may not carry (400).
    dims: dynamic dims besides the batch (DynamicDim: a sequence length's input axes, rungs, pad value,
    output axes); the example may have any size along them (it is padded or cut to each bucket).
    mask: the input marking real positions (1) and padding (0) along the dims that carry it, padded with
    0; a request sends it like any other input. It must be carried by one of `dims`.
    """

    fn: Callable[..., Any]
    example: tuple[tuple[str, torch.Tensor], ...]
    keywords: bool = False
    finite: frozenset[str] = field(default_factory=frozenset)
    name: str = "model"
    dims: tuple[DynamicDim, ...] = ()
    mask: str | None = None

    def __post_init__(self) -> None:
        if not self.example:
            raise ConfigError("a served model needs at least one example input tensor")
        for name, tensor in self.example:
            if not isinstance(tensor, torch.Tensor) or tensor.dim() < 1:
                raise ConfigError(f"example input {name!r} must be a tensor with a batch dim (dim 0)")
            if tensor.dtype not in _WIRE:
                raise ConfigError(
                    f"example input {name!r} has dtype {tensor.dtype}; use one of {list(_WIRE)}"
                )
        unknown = self.finite - {name for name, _ in self.example}
        if unknown:
            raise ConfigError(f"finite names inputs the example lacks: {sorted(unknown)}")
        self._check_dims()

    def _check_dims(self) -> None:
        ranks = {name: t.dim() for name, t in self.example}
        names = [dim.name for dim in self.dims]
        if len(set(names)) != len(names):
            raise ConfigError(f"dynamic dims need distinct names, got {names}")
        for dim in self.dims:
            bad = {n: a for n, a in dim.axes.items() if n not in ranks or a >= ranks[n]}
            if bad:
                raise ConfigError(
                    f"dim {dim.name!r} names axes {bad} that no example input has (inputs and ranks: {ranks})"
                )
        if self.mask is not None and not any(self.mask in dim.axes for dim in self.dims):
            raise ConfigError(f"mask {self.mask!r} must be an input carried by one of dims (its axes)")

    def dynamic_axes(self, name: str) -> set[int]:
        """The axes of input `name` that a declared dim carries (the batch's, 0, aside)."""
        return {dim.axes[name] for dim in self.dims if name in dim.axes}

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(name, _WIRE[t.dtype], _shape(t, self.dynamic_axes(name)), name in self.finite)
            for name, t in self.example
        )

    def call_args(self, tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """(args, kwargs) to call fn (or its runner) with."""
        if self.keywords:
            return (), {name: tensors[name] for name, _ in self.example}
        return tuple(tensors[name] for name, _ in self.example), {}

    @property
    def device(self) -> torch.device:
        return self.example[0][1].device


def _shape(example: torch.Tensor, dynamic: set[int]) -> tuple[int | None, ...]:
    """The example's shape with None on the batch (0) and every dynamic axis."""
    return tuple(
        None if axis == 0 or axis in dynamic else int(size) for axis, size in enumerate(example.shape)
    )


def output_names(outputs: object) -> tuple[str, ...]:
    """The names of a call's outputs: "output", "output0".., or a dict's keys."""
    if isinstance(outputs, torch.Tensor):
        return ("output",)
    if isinstance(outputs, tuple | list) and all(isinstance(o, torch.Tensor) for o in outputs):
        return tuple(f"output{i}" for i in range(len(outputs)))
    if isinstance(outputs, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in outputs.items()
    ):
        return tuple(outputs)
    raise ConfigError(
        "a served model must return a tensor, a tuple of tensors or a dict of named tensors, "
        f"got {type(outputs).__name__}"
    )


def named_outputs(outputs: Any) -> dict[str, torch.Tensor]:
    """A call's outputs by name (output_names' names)."""
    names = output_names(outputs)
    if isinstance(outputs, torch.Tensor):
        return {names[0]: outputs}
    if isinstance(outputs, dict):
        return dict(outputs)
    return dict(zip(names, outputs, strict=True))


def output_specs(source: ModelSource) -> tuple[TensorSpec, ...]:
    """Run the model once on its example: its outputs' names, dtypes and shapes; each must keep the batch."""
    args, kwargs = source.call_args(dict(source.example))
    with torch.no_grad():
        outputs = named_outputs(source.fn(*args, **kwargs))
    rows = source.example[0][1].shape[0]
    specs = []
    for name, tensor in outputs.items():
        if tensor.dim() < 1 or tensor.shape[0] != rows or tensor.dtype not in _WIRE:
            raise ConfigError(
                f"output {name!r} (shape {list(tensor.shape)}, {tensor.dtype}) must keep the batch in dim 0 "
                f"({rows} rows for the example) and have a dtype of {list(_WIRE)}"
            )
        specs.append(TensorSpec(name, _WIRE[tensor.dtype], (None, *tensor.shape[1:])))
    return tuple(specs)


def load_module_factory(spec: str) -> ModelSource:
    """`pkg.mod:factory` -> the ModelSource the factory returns (or builds from (module, example))."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--module takes pkg.mod:factory, got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--module {spec}: cannot import the factory ({exc})") from exc
    made = factory()
    if isinstance(made, ModelSource):
        return made
    if not (isinstance(made, tuple) and len(made) == 2):
        raise ConfigError(
            f"--module {spec}: the factory must return a ModelSource or (module, example_inputs)"
        )
    return _from_pair(made[0], made[1], name=attr)


def _from_pair(fn: Callable[..., Any], example: Any, name: str) -> ModelSource:
    if isinstance(fn, torch.nn.Module):
        fn.eval()
    if isinstance(example, dict):
        return ModelSource(fn, tuple(example.items()), keywords=True, name=name)
    tensors = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    return ModelSource(fn, tuple(zip(_parameter_names(fn, len(tensors)), tensors, strict=True)), name=name)


def _parameter_names(fn: Callable[..., Any], count: int) -> list[str]:
    """forward's positional parameter names, or input0.. where they cannot be read."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn  # a module's own signature is __call__'s
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return positional[:count] if len(positional) >= count else [f"input{i}" for i in range(count)]
