"""What /act takes and gives, and the checks on an observation (HTTP side, before the engine sees it).

The tensor checks are /v1/infer's (infer/schema.py: names, dtype, rank, fixed dims, batch rows, NaN),
over the inputs a request carries (an optional input may be left out), then each declared integer range:
an out-of-range token id would fail deep in an embedding, or on a GPU kill the CUDA context, so it is a
400 here. A request carries at most the top rung's rows: a batch of requests never runs past the ladder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphrun.serve.infer.errors import TensorError
from graphrun.serve.infer.schema import InferSchema, TensorSpec


@dataclass(frozen=True, slots=True)
class ActSchema:
    """The observation's tensors (`optional` ones may be left out; `ranges`: [low, high) of an integer
    input), the action output, and the batch rungs every stage was captured for."""

    inputs: tuple[TensorSpec, ...]
    output: TensorSpec
    rungs: tuple[int, ...]
    optional: frozenset[str] = frozenset()
    ranges: tuple[tuple[str, int, int], ...] = ()

    @property
    def max_rows(self) -> int:
        return self.rungs[-1]

    def validate(self, tensors: Mapping[str, np.ndarray]) -> int:
        """The request's batch rows, once every rule holds; else TensorError for the first broken."""
        names = [spec.name for spec in self.inputs]
        for name in tensors:
            if name not in names:
                raise TensorError(
                    name, "unknown_name", f"the policy takes no input of this name; it takes {names}"
                )
        present = tuple(s for s in self.inputs if s.name in tensors or s.name not in self.optional)
        rows = InferSchema(present, (self.output,), self.rungs, self.max_rows).validate(tensors)
        for name, low, high in self.ranges:
            array = tensors.get(name)
            if array is not None and array.size and (array.min() < low or array.max() >= high):
                raise TensorError(
                    name, "range", f"values must be in [{low}, {high}), got [{array.min()}, {array.max()}]"
                )
        return rows

    def describe(self) -> dict[str, Any]:
        """The /v1/models fields: each input (optional or not, its range), the output, the batch rungs."""
        ranges = {name: [low, high] for name, low, high in self.ranges}

        def entry(spec: TensorSpec) -> dict[str, Any]:
            described = {**spec.describe(), "optional": spec.name in self.optional}
            return {**described, "range": ranges[spec.name]} if spec.name in ranges else described

        return {
            "inputs": [entry(spec) for spec in self.inputs],
            "outputs": [self.output.describe()],
            "rungs": list(self.rungs),
            "max_rows": self.max_rows,
        }
