"""What a served model takes and gives: named tensors with a dtype and a shape, and the checks on a request.

Dimension 0 of every input and output is the batch dimension: dynamic, and the one the runner pads to
its rungs. A model may declare more dynamic dims (dims.py: a sequence length, with its rungs); every
other dimension is fixed by the example inputs (None in `shape` marks a dynamic one). The checks run on
the HTTP side, before anything crosses to the engine, in a fixed order so the 400 names the first rule
broken: names (unknown, then missing), then per input its dtype, rank, fixed dims, then the batch rows
(all equal, >= 1, <= max_rows), then each declared dim (inputs agree, >= 1, <= its top rung), then
NaN/infinity for inputs declared finite.

The bucket key: the batcher groups requests by it, and only requests of one bucket share a replay. With
only the batch dim dynamic every request has the same key; with more dims the engine side computes it
from the request's shapes by BucketedRunner.bucket_of (the rung of each declared dim).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphrun.serve.infer.dims import BATCH_NAME, DynamicDim
from graphrun.serve.infer.errors import TensorError

BATCH_DIM = 0


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor: its wire dtype and its shape (None: a dynamic dim; dim 0 is the batch)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    finite: bool = False  # NaN and infinity are refused (inputs only)

    def describe(self, dims: Mapping[str, int] | None = None) -> dict[str, Any]:
        """The /v1/models entry; dims: the declared dynamic dims this tensor carries, name -> axis
        (listed with the batch's as `axes`)."""
        dynamic = [i for i, size in enumerate(self.shape) if size is None]
        entry: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        named = {BATCH_NAME: BATCH_DIM, **(dims or {})}
        return {**entry, "dynamic_dims": dynamic, "axes": named, "finite": self.finite}


@dataclass(frozen=True, slots=True)
class BucketKey:
    """Requests with equal keys may share one padded replay: the rung of each declared dynamic dim but
    the batch (empty while the batch is the only dynamic dim; a request no bucket takes has its own
    sizes, and shares an eager call with requests of exactly those sizes only)."""

    dims: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class InferSchema:
    """The model's inputs and outputs, its batch rungs, the largest request it takes, and its declared
    dynamic dims besides the batch (their `outputs` resolved) with the mask input."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    rungs: tuple[int, ...]
    max_rows: int
    dims: tuple[DynamicDim, ...] = ()
    mask: str | None = None

    def validate(self, tensors: Mapping[str, np.ndarray]) -> int:
        """The request's batch rows, once every rule holds; else TensorError for the first broken."""
        self._check_names(tensors)
        for spec in self.inputs:
            _check_layout(spec, tensors[spec.name])
        rows = self._check_rows(tensors)
        for dim in self.dims:
            _check_dim(dim, tensors)
        for spec in self.inputs:
            if spec.finite and not np.isfinite(tensors[spec.name]).all():
                raise TensorError(
                    spec.name, "nan", "the model takes finite values only (no NaN, no infinity)"
                )
        return rows

    def describe(self) -> dict[str, Any]:
        """The /v1/models fields of the tensors and dims: each dynamic dim with its rungs, batch first."""
        batch = {"name": BATCH_NAME, "rungs": list(self.rungs), "max": self.max_rows}
        return {
            "inputs": [spec.describe(self._carried(spec.name, False)) for spec in self.inputs],
            "outputs": [spec.describe(self._carried(spec.name, True)) for spec in self.outputs],
            "dynamic_dims": [batch, *(dim.describe() for dim in self.dims)],
            "mask": self.mask,
        }

    def _carried(self, name: str, output: bool) -> dict[str, int]:
        axes = ((dim.name, (dim.outputs or {}) if output else dim.axes) for dim in self.dims)
        return {dim: carried[name] for dim, carried in axes if name in carried}

    def _check_names(self, tensors: Mapping[str, np.ndarray]) -> None:
        names = [spec.name for spec in self.inputs]
        for name in tensors:
            if name not in names:
                raise TensorError(
                    name, "unknown_name", f"the model takes no input of this name; it takes {names}"
                )
        for name in names:
            if name not in tensors:
                raise TensorError(name, "missing", f"the model needs this input; it takes {names}")

    def _check_rows(self, tensors: Mapping[str, np.ndarray]) -> int:
        first = self.inputs[0].name
        rows = tensors[first].shape[BATCH_DIM]
        for spec in self.inputs[1:]:
            other = tensors[spec.name].shape[BATCH_DIM]
            if other != rows:
                raise TensorError(spec.name, "batch", f"has {other} rows (dim 0) but {first} has {rows}")
        if rows < 1:
            raise TensorError(first, "batch", "the batch (dim 0) is empty; send at least one row")
        if rows > self.max_rows:
            raise TensorError(
                first, "too_large", f"{rows} rows is over the limit of {self.max_rows} a request"
            )
        return rows


def _check_layout(spec: TensorSpec, array: np.ndarray) -> None:
    if array.dtype.name != spec.dtype:
        raise TensorError(spec.name, "dtype", f"dtype must be {spec.dtype}, got {array.dtype.name}")
    if array.ndim != len(spec.shape):
        raise TensorError(
            spec.name,
            "rank",
            f"must have {len(spec.shape)} dims {_shape(spec)}, got shape {list(array.shape)}",
        )
    for dim, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if want is not None and want != got:
            raise TensorError(spec.name, "static_dim", f"dim {dim} must be {want} {_shape(spec)}, got {got}")


def _check_dim(dim: DynamicDim, tensors: Mapping[str, np.ndarray]) -> None:
    """The inputs carrying `dim` agree on its size, which is from 1 to the top rung."""
    sizes = {name: tensors[name].shape[axis] for name, axis in dim.axes.items()}
    first, size = next(iter(sizes.items()))
    for name, other in sizes.items():
        if other != size:
            where = f"dim {dim.axes[name]} ({dim.name})"
            raise TensorError(name, "dynamic_dim", f"{where} is {other} but {first} has {size}")
    where = f"dim {dim.axes[first]} ({dim.name})"
    if size < 1:
        raise TensorError(first, "dynamic_dim", f"{where} is empty; send at least 1")
    if size > dim.top:
        raise TensorError(
            first,
            "too_large",
            f"{where} is {size}, above the top rung {dim.top} of {dim.name}; send at most {dim.top}",
        )


def _shape(spec: TensorSpec) -> str:
    names = [
        "batch" if i == BATCH_DIM else "any" if size is None else size for i, size in enumerate(spec.shape)
    ]
    return "(shape " + str(names).replace("'", "") + ")"
