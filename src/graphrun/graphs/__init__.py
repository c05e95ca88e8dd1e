"""The capture/replay runtime: knows nothing of LLMs, HTTP or tokens."""

from graphrun.graphs.backends import FaultPlan, SimBackend, make_backend
from graphrun.graphs.buckets import Bucket, BucketDim, BucketedRunner, BucketedStatus, BucketOptions
from graphrun.graphs.modes import BatchDescriptor, CudaGraphMode
from graphrun.graphs.options import CaptureWhen
from graphrun.graphs.piecewise import mark_uncapturable, unmark_uncapturable
from graphrun.graphs.runner import GraphRunner
from graphrun.graphs.sizes import default_ladder, padding_report, recommend_ladder, rung_for
from graphrun.graphs.status import CallFallback, CaptureFailure, RungStatus, RunnerStatus

__all__ = [
    "BatchDescriptor",
    "Bucket",
    "BucketDim",
    "BucketOptions",
    "BucketedRunner",
    "BucketedStatus",
    "CallFallback",
    "CaptureFailure",
    "CaptureWhen",
    "CudaGraphMode",
    "FaultPlan",
    "GraphRunner",
    "RungStatus",
    "RunnerStatus",
    "SimBackend",
    "default_ladder",
    "make_backend",
    "mark_uncapturable",
    "padding_report",
    "recommend_ladder",
    "rung_for",
    "unmark_uncapturable",
]
