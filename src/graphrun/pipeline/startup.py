"""Tier-aware start-up: each stage probes its own capture; a stage that cannot capture runs eager alone.

A GPU that cannot fit one stage's graph (out of memory, an uncapturable op, over its memory budget, a
replay that differs from eager) must still serve: that stage runs eager for the life of the process and
the other stages keep their graphs. Each failed rung is counted once by its runner under
`graphrun_cuda_graph_capture_failed_at_init_total`, labelled with the stage and model (metrics.py), and
the pipeline says so in one INFO line per failed stage. Graphs switched off on purpose (mode "none", no
graph backend) are not failures: those stages are eager without a line of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from graphrun.graphs.status import CaptureFailure, RunnerStatus
from graphrun.pipeline.stage import Stage

log = logging.getLogger(__name__)

# reasons that mean "graphs are off here", chosen by configuration, not a capture that failed
CHOSEN_EAGER = frozenset({CaptureFailure.MODE_NONE, CaptureFailure.NO_GRAPH_BACKEND})


class StageTier(StrEnum):
    """How a stage runs after start-up."""

    GRAPH = "graph"  # every rung captured
    PARTIAL = "partial"  # some rungs captured; calls of the others' sizes run eager
    EAGER = "eager"  # no rung captured: every call runs eager for the life of the process


@dataclass(frozen=True, slots=True)
class StageReport:
    """One stage after its start-up probe: tier, the first failure's reason and detail, cost of capture."""

    stage: str
    runner: str
    tier: StageTier
    num_captured: int
    num_rungs: int
    capture_seconds: float
    nbytes: int
    reason: CaptureFailure | None = None
    detail: str = ""

    @property
    def failed(self) -> bool:
        """True when a capture failed (not when graphs were switched off on purpose)."""
        return self.reason is not None and self.reason not in CHOSEN_EAGER

    def __str__(self) -> str:
        text = f"{self.stage} {self.tier} ({self.num_captured}/{self.num_rungs} rungs"
        text += f", {self.capture_seconds:.2f} s, {self.nbytes / 2**20:.1f} MiB)"
        return f"{text} [{self.reason}]" if self.reason is not None else text


def report(stage: Stage, status: RunnerStatus) -> StageReport:
    """Read a stage's runner status into its report (the first rung that ran eager gives the reason)."""
    rungs = tuple(status)
    captured = [r for r in rungs if r.captured]
    eager = [r for r in rungs if not r.captured]
    tier = StageTier.EAGER if not captured else StageTier.PARTIAL if eager else StageTier.GRAPH
    first = eager[0] if eager else None
    return StageReport(
        stage.name,
        status.runner,
        tier,
        len(captured),
        len(rungs),
        sum(r.capture_seconds for r in rungs),
        sum(r.nbytes for r in captured),
        first.reason if first is not None else None,
        first.detail if first is not None else "",
    )


def probe(stage: Stage) -> StageReport:
    """The stage's capture result: a runner built to capture later (capture=False) is captured now, and
    one capturing in the background is waited for, so every stage is captured or has fallen back."""
    runner = stage.runner
    status = runner.status()
    capture, wait = getattr(runner, "capture", None), getattr(runner, "wait_captured", None)
    if status.pending and callable(wait):
        wait()
        status = runner.status()
    elif not len(status) and callable(capture):
        status = capture()
    return report(stage, status)


def start_up(model: str, stages: Sequence[Stage]) -> tuple[StageReport, ...]:
    """Probe every stage; log one INFO line per stage whose capture failed, then one summary line."""
    reports = tuple(probe(stage) for stage in stages)
    for r in reports:
        if r.failed:
            kept = [o.stage for o in reports if o.tier is not StageTier.EAGER and o is not r]
            log.info(
                "pipeline %s: stage %s runs eager %s: %s (%s); graphs kept by: %s",
                model,
                r.stage,
                "for the life of the process" if r.tier is StageTier.EAGER else "for its failed rungs",
                r.reason,
                r.detail,
                ", ".join(kept) or "none",
            )
    log.info("pipeline %s ready: %s", model, "; ".join(str(r) for r in reports))
    return reports
