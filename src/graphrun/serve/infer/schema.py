"""What a served model takes and gives: named tensors with a dtype and a shape, and the checks on a request.

Dimension 0 of every input and output is the batch dimension: dynamic, and the one the runner pads to
its rungs. Every other dimension is fixed by the example inputs today (None in `shape` marks a dynamic
one). The checks run on the HTTP side, before anything crosses to the engine, in a fixed order so the
400 names the first rule broken: names (unknown, then missing), then per input its dtype, rank, fixed
dims, then the batch rows (all equal, >= 1, <= max_rows), then NaN/infinity for inputs declared finite.

The bucket key is the seam for multi-dim buckets: the batcher groups requests by it, and only requests
of one bucket share a replay. With only the batch dim dynamic every request has the same key; when a
runner declares more dims dynamic (batch x sequence length, graphrun.graphs), the key becomes the rung
of each of those dims, computed here from the request's shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphrun.serve.infer.errors import TensorError

BATCH_DIM = 0


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor: its wire dtype and its shape (None: a dynamic dim; dim 0 is the batch)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    finite: bool = False  # NaN and infinity are refused (inputs only)

    def describe(self) -> dict[str, Any]:
        """The /v1/models entry."""
        dynamic = [i for i, size in enumerate(self.shape) if size is None]
        entry: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        return {**entry, "dynamic_dims": dynamic, "finite": self.finite}


@dataclass(frozen=True, slots=True)
class BucketKey:
    """Requests with equal keys may share one padded replay: the rung of each dynamic dim but the batch
    (empty while the batch is the only dynamic dim)."""

    dims: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class InferSchema:
    """The model's inputs and outputs, its rungs, and the largest request it takes."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    rungs: tuple[int, ...]
    max_rows: int

    def validate(self, tensors: Mapping[str, np.ndarray]) -> int:
        """The request's batch rows, once every rule holds; else TensorError for the first broken."""
        self._check_names(tensors)
        for spec in self.inputs:
            _check_layout(spec, tensors[spec.name])
        rows = self._check_rows(tensors)
        for spec in self.inputs:
            if spec.finite and not np.isfinite(tensors[spec.name]).all():
                raise TensorError(
                    spec.name, "nan", "the model takes finite values only (no NaN, no infinity)"
                )
        return rows

    def bucket_key(self, tensors: Mapping[str, np.ndarray]) -> BucketKey:
        """The bucket of a validated request (one bucket while only the batch dim is dynamic)."""
        return BucketKey()

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


def _shape(spec: TensorSpec) -> str:
    return "(shape " + str(["batch" if size is None else size for size in spec.shape]).replace("'", "") + ")"
