"""What an /act request carries through the engine host (host/messages.py): its submission, its one
event, and the served policy's info."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from graphrun.serve.act.schema import ActSchema


@dataclass(frozen=True, slots=True)
class ActSubmit:
    """One observation, validated on the HTTP side: wire arrays with `rows` rows in dim 0;
    observation_id keys its prefix in the cache (None: not cached)."""

    request_ids: tuple[int]
    tensors: tuple[tuple[str, np.ndarray], ...]
    rows: int
    observation_id: str | None
    arrival: float  # time.monotonic() at submission


@dataclass(frozen=True, slots=True)
class ActResult:
    """The request's action chunk, its own rows only: its one (terminal) event."""

    actions: np.ndarray


@dataclass(frozen=True, slots=True)
class StageInfo:
    """How a stage runs since start-up (graph, partial or eager) and, when a capture failed, why."""

    stage: str
    tier: str
    reason: str | None
    captured: int
    rungs: int


@dataclass(frozen=True, slots=True)
class ActInfo:
    """The served policy: its schema, stages, settings and start-up facts."""

    schema: ActSchema
    policy: str  # the --policy value
    device: str
    dtype: str
    backend: str  # the graph backend the stages' runners resolved
    stages: tuple[StageInfo, ...]
    denoising_steps: int | None
    max_wait_ms: float
    engine_pid: int

    @property
    def facts(self) -> dict[str, Any]:
        """For /health: each stage's tier (and its failure's reason), the device, the rungs."""
        stages = {s.stage: {"tier": s.tier, "reason": s.reason, "captured": f"{s.captured}/{s.rungs}"}
                  for s in self.stages}  # fmt: skip
        facts = {
            "policy": self.policy,
            "device": self.device,
            "dtype": self.dtype,
            "graph_backend": self.backend,
        }
        return {**facts, "stages": stages, "rungs": list(self.schema.rungs), "engine_pid": self.engine_pid}
