"""Which captured rung serves each batch size, and why a batch without one runs eager.

A runner installs here what each capture pass hands back (capture.py: graphs, statuses, static outputs).
After every change one list per batch size is rebuilt: the batch's own rung if captured, else the
smallest captured rung that accepts padding; and, for a batch that gets neither, the reason it runs
eager. Verification decides which rungs accept padding, so it is all known here, and a call pays one
index whatever verification found.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from graphrun.graphs.backends import CapturedGraph
from graphrun.graphs.outputs import StaticOutputs
from graphrun.graphs.sizes import rung_for
from graphrun.graphs.spec import CaptureResult
from graphrun.graphs.status import (
    CacheUse,
    CallFallback,
    CaptureFailure,
    CompileReport,
    RungStatus,
    RunnerStats,
)

log = logging.getLogger("graphrun.graphs.runner")

_ALL_EAGER_CALLS = {
    CaptureFailure.MODE_NONE: CallFallback.MODE_NONE,
    CaptureFailure.UNTRACEABLE: CallFallback.UNTRACEABLE,
}


class RungTable:
    """The installed rungs of one runner and, per batch size 1..top, the rung that serves it or why none.

    all_eager: when no rung can ever hold a graph (mode none, untraceable, no graph backend), the reason
    and its detail; the table then marks every rung eager instead of installing graphs.
    """

    def __init__(self, sizes: tuple[int, ...], all_eager: tuple[CaptureFailure, str] | None) -> None:
        self.sizes = sizes
        self.all_eager = all_eager
        self.graphs: dict[int, CapturedGraph] = {}
        self.statuses: dict[int, RungStatus] = {}
        self.outputs: StaticOutputs | None = None  # learned by the first pass that ran a rung
        self.compile_report: CompileReport | None = None
        self.captured_once = False  # False until capture (or a background pass) began, and after close
        # batch size n -> the rung it replays, or None; and why it runs eager when None
        self.dispatch: list[int | None] = [None] * (sizes[-1] + 1)
        self.eager_reasons = [CallFallback.NOT_CAPTURED_YET] * (sizes[-1] + 1)

    def install(self, result: CaptureResult, stats: RunnerStats) -> None:
        """Take one capture pass's graphs, statuses and static outputs, and count them in `stats`."""
        stats.num_captured += result.num_captured
        stats.capture_seconds += result.capture_seconds
        if result.compile is not None:
            self.compile_report = result.compile
            stats.compile_seconds = result.compile.seconds
            stats.compile_cache_hit = result.compile.cache is CacheUse.HIT
        for reason, count in result.failures().items():
            stats.capture_failed[reason] = stats.capture_failed.get(reason, 0) + count
        self.statuses.update(result.statuses)
        if result.outputs is not None:
            self.outputs = result.outputs
        self.graphs.update(result.graphs)

    def release(self) -> None:
        """Release every graph (statuses stay: they say what was captured)."""
        for graph in self.graphs.values():
            graph.release()
        self.graphs.clear()

    def reset(self) -> None:
        """Release every graph and forget every status, before a new capture pass."""
        self.release()
        self.statuses.clear()

    def mark_all_eager(self, stats: RunnerStats, name: str) -> None:
        """Every rung eager for the reason in all_eager, counted once per rung."""
        assert self.all_eager is not None
        reason, why = self.all_eager
        for size in self.sizes:
            self.statuses[size] = RungStatus(size, False, reason=reason, detail=why)
        stats.capture_failed[reason] = len(self.sizes)
        log.info("runner %s: no graphs, every call runs eager: %s (%s)", name, reason.value, why)

    def rebuild(self, pending: Sequence[int]) -> None:
        """Per batch size: its own rung if captured, else the smallest captured rung that accepts padding.

        pending: rungs a background capture has still to capture (their batches run eager as capturing).
        """
        captured = sorted(self.graphs)
        padded = [r for r in captured if self.statuses[r].padded]
        for n in range(1, self.sizes[-1] + 1):
            self.dispatch[n] = n if n in self.graphs else rung_for(padded, n)
            self.eager_reasons[n] = self._eager_reason(n, captured, pending)

    def _eager_reason(self, n: int, captured: list[int], pending: Sequence[int]) -> CallFallback:
        """Why batch n has no rung: none captured that fits, or those that fit replay exact sizes only."""
        if any(r >= n for r in pending):
            return CallFallback.CAPTURING
        if not self.captured_once:
            return CallFallback.NOT_CAPTURED_YET
        if self.all_eager is not None and self.all_eager[0] in _ALL_EAGER_CALLS:
            return _ALL_EAGER_CALLS[self.all_eager[0]]
        fits = [self.statuses[r] for r in captured if r >= n]
        if not fits:
            return CallFallback.RUNG_NOT_CAPTURED
        if any(s.reason is CaptureFailure.PADDING_MISMATCH for s in fits):
            return CallFallback.PADDING_MISMATCH
        return CallFallback.PADDING_FORBIDDEN

    def rung_for(self, batch_size: int) -> int | None:
        """The captured rung a call of `batch_size` replays, or None when it would run eager."""
        return self.dispatch[batch_size] if 0 < batch_size < len(self.dispatch) else None

    def why_eager(self, batch_size: int) -> CallFallback:
        """Why a call of `batch_size` has no rung (above the top rung, or its entry in the table)."""
        if batch_size >= len(self.dispatch):
            return CallFallback.ABOVE_TOP_RUNG
        return self.eager_reasons[batch_size]

    def rung_statuses(self) -> tuple[RungStatus, ...]:
        """The statuses of the rungs that have one, smallest first."""
        return tuple(self.statuses[r] for r in self.sizes if r in self.statuses)
