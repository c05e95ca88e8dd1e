"""Why a rung or a call ran eager, and what each rung holds: the fixed vocabulary of fallbacks.

Reasons are a closed enum so metric labels stay bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class CaptureFailure(StrEnum):
    """Why a rung was not captured at start-up (it then runs eager for the life of the process)."""

    NO_GRAPH_BACKEND = "no_graph_backend"  # backend "auto" without CUDA tensors: nothing is captured
    OOM = "oom"
    UNCAPTURABLE_OP = "uncapturable_op"
    HOST_SYNC = "host_sync"
    VERIFICATION = "verification_mismatch"
    MEMORY_BUDGET = "memory_budget"
    OUTPUT_SHAPE = "output_shape"
    ERROR = "error"


class CallFallback(StrEnum):
    """Why one call ran eager."""

    ABOVE_TOP_RUNG = "above_top_rung"
    RUNG_NOT_CAPTURED = "rung_not_captured"
    REPLAY_ERROR = "replay_error"
    NOT_CAPTURED_YET = "not_captured_yet"


@dataclass(frozen=True, slots=True)
class RungStatus:
    """One rung after capture: captured (graph bytes, seconds) or eager with the reason and detail."""

    size: int
    captured: bool
    nbytes: int = 0
    capture_seconds: float = 0.0
    reason: CaptureFailure | None = None
    detail: str = ""

    def __str__(self) -> str:
        if self.captured:
            return f"rung {self.size}: captured, {self.nbytes / 2**20:.1f} MiB, {self.capture_seconds:.3f} s"
        return f"rung {self.size}: eager ({self.reason}: {self.detail})"


# Replay host-time buckets (seconds): replay is tens of microseconds, eager fallbacks milliseconds.
REPLAY_BUCKETS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 2e-2, 1e-1)


@dataclass(slots=True)
class RunnerStats:
    """Plain counters updated on the hot path; the Prometheus collector reads them at scrape time.

    Plain ints cost ~50 ns to bump; prometheus_client children take a lock per update.
    """

    num_captured: int = 0
    num_replayed: int = 0
    num_graph_rows: int = 0
    num_padded_rows: int = 0
    capture_seconds: float = 0.0
    capture_failed: dict[CaptureFailure, int] = field(default_factory=dict)
    eager_fallback: dict[CallFallback, int] = field(default_factory=dict)
    replay_bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(REPLAY_BUCKETS) + 1))
    replay_seconds_sum: float = 0.0

    def count_fallback(self, reason: CallFallback) -> None:
        """Count one call that ran eager."""
        self.eager_fallback[reason] = self.eager_fallback.get(reason, 0) + 1

    @property
    def padding_ratio(self) -> float:
        """Padded rows over all rows graphs computed since start."""
        total = self.num_graph_rows + self.num_padded_rows
        return self.num_padded_rows / total if total else 0.0
