"""What a tensor request carries through the engine host (host/messages.py): its submission, its one
event, and the model's info."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from graphrun.serve.infer.schema import InferSchema


@dataclass(frozen=True, slots=True)
class InferSubmit:
    """One tensor request, validated on the HTTP side: numpy arrays with `rows` rows in dim 0, in the
    model's input order (the engine side keys it by its bucket)."""

    request_ids: tuple[int]
    tensors: tuple[tuple[str, np.ndarray], ...]
    rows: int
    arrival: float  # time.monotonic() at submission


@dataclass(frozen=True, slots=True)
class InferResult:
    """A tensor request's outputs by name, its own rows only: its one (terminal) event."""

    outputs: tuple[tuple[str, np.ndarray], ...]


@dataclass(frozen=True, slots=True)
class InferInfo:
    """A tensor model's schema (names, dtypes, shapes, rungs), batching and start-up facts."""

    schema: InferSchema
    source: str  # the --module factory or --exported archive
    device: str
    backend: str  # the graph backend its runner resolved
    max_wait_ms: float
    engine_pid: int

    @property
    def facts(self) -> dict[str, Any]:
        """For /health, as ModelInfo.facts."""
        rungs, wait = list(self.schema.rungs), self.max_wait_ms
        facts = {"model": self.source, "device": self.device, "graph_backend": self.backend}
        return {**facts, "rungs": rungs, "max_wait_ms": wait, "engine_pid": self.engine_pid}
