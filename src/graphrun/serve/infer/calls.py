"""How a served tensor model turns one batch of requests into model calls: the interface and its helpers.

Two kinds implement it: rows.py (only the batch is dynamic: concatenate the requests' rows, one
GraphRunner call per top-rung chunk, split by rows) and bucketed.py (more dims dynamic: pad each request
to its bucket, stack, one BucketedRunner call per chunk, split by rows and slice each request back to its
own sizes). model.py drives either without knowing which.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import numpy as np
import torch

from graphrun.serve.infer.dims import DynamicDim
from graphrun.serve.infer.schema import BucketKey, TensorSpec

Arrays = dict[str, np.ndarray]
T = TypeVar("T", np.ndarray, torch.Tensor)


class ModelCalls(Protocol):
    """What the served model needs of its runner: keys, batch runs, and what it publishes."""

    rungs: tuple[int, ...]  # the batch rungs
    outputs: tuple[TensorSpec, ...]  # the outputs' specs (None on every dynamic axis)
    dims: tuple[DynamicDim, ...]  # the declared dims besides the batch, their output axes resolved

    def key(self, tensors: Arrays) -> BucketKey:
        """The bucket a validated request is batched in."""
        ...

    def run(
        self, key: BucketKey, requests: Sequence[Arrays], on_launched: Callable[[], None]
    ) -> list[Arrays]:
        """Each request's outputs, the batch run as one call per top-rung chunk of its rows."""
        ...

    def backend(self) -> str:
        """The graph backend the runner resolved ("eager" when none)."""
        ...

    def graphs(self) -> str:
        """For /health: "off", or "captured N/M" over every graph the runner meant to capture."""
        ...


def run_chunks(
    inputs: dict[str, T],
    top: int,
    launch: Callable[[dict[str, T], slice], Arrays],
    on_launched: Callable[[], None],
) -> Arrays:
    """One launch per top-rung chunk of the rows (one unless a request is oversized), given the chunk and
    its rows; each chunk's outputs are on the host (Arrays) before the next call overwrites the static
    buffers."""
    total = next(iter(inputs.values())).shape[0]
    chunks: list[Arrays] = []
    for start in range(0, total, top):
        rows = slice(start, start + top)
        chunks.append(launch({name: tensor[rows] for name, tensor in inputs.items()}, rows))
        if start == 0:
            on_launched()  # the previous step's held events go out while this one computes
    if len(chunks) == 1:
        return chunks[0]
    return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}


def split_rows(outputs: Arrays, rows: Sequence[int]) -> list[Arrays]:
    """Each request's rows of the batch's outputs, in order."""
    split, start = [], 0
    for count in rows:
        split.append({name: array[start : start + count] for name, array in outputs.items()})
        start += count
    return split


def to_wire(tensor: torch.Tensor) -> np.ndarray:
    """A copy on the host in a wire dtype (bfloat16 travels as float32)."""
    dtype = torch.float32 if tensor.dtype == torch.bfloat16 else tensor.dtype
    return tensor.detach().to("cpu", dtype, copy=True).numpy()


def graphs_summary(captured: int, total: int) -> str:
    return "off" if captured == 0 else f"captured {captured}/{total}"
