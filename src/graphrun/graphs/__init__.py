"""The capture/replay runtime: knows nothing of LLMs, HTTP or tokens."""

from graphrun.graphs.backends import FaultPlan, SimBackend, make_backend
from graphrun.graphs.runner import GraphRunner
from graphrun.graphs.sizes import default_ladder, padding_report, recommend_ladder, rung_for
from graphrun.graphs.status import CallFallback, CaptureFailure, RungStatus, RunnerStatus

__all__ = [
    "CallFallback",
    "CaptureFailure",
    "FaultPlan",
    "GraphRunner",
    "RungStatus",
    "RunnerStatus",
    "SimBackend",
    "default_ladder",
    "make_backend",
    "padding_report",
    "recommend_ladder",
    "rung_for",
]
