"""Why a capture failed, read from its exception: the mapping onto the fixed reasons of status.py.

Capture errors arrive as exceptions of many kinds and wordings (CUDA wraps the first error in later ones),
so the whole exception chain is read, and the root cause is what a log line should show.
"""

from __future__ import annotations

import torch

from graphrun.errors import HostSyncError, UncapturableOpError
from graphrun.graphs.status import CaptureFailure

_HOST_SYNC_MARKERS = ("operation not permitted when stream is capturing", "cudaErrorStreamCaptureImplicit")
_CAPTURE_MARKERS = ("capture", "cudaErrorStreamCapture")


class OutputShapeError(RuntimeError):
    """The callable's outputs at one rung do not fit the static outputs learned at another."""


class SegmentCaptureError(RuntimeError):
    """A piecewise segment could not be captured at one rung (the cause is chained)."""


class DynamicInputError(RuntimeError):
    """A piecewise segment's input differs in shape (or a non-tensor one in value) from its capture."""


def classify(exc: BaseException) -> CaptureFailure:
    """Map a capture-time exception onto the fixed set of reasons.

    On CUDA the first error (say, from .item()) is often wrapped: capture_end then fails with "operation
    failed due to a previous error during capture", so the whole exception chain is read.
    """
    chain = _exception_chain(exc)
    if any(isinstance(e, torch.OutOfMemoryError) for e in chain):
        return CaptureFailure.OOM
    if any(isinstance(e, OutputShapeError) for e in chain):
        return CaptureFailure.OUTPUT_SHAPE
    if isinstance(exc, SegmentCaptureError) and exc.__cause__ is None:  # its own finding, not a wrapper
        return CaptureFailure.SEGMENT_NOT_CAPTURED
    texts = [str(e) for e in chain]
    segment = any(isinstance(e, SegmentCaptureError) for e in chain)
    if any(isinstance(e, HostSyncError) for e in chain) or any(
        m in t for t in texts for m in _HOST_SYNC_MARKERS
    ):
        return CaptureFailure.HOST_SYNC
    if any(isinstance(e, UncapturableOpError) for e in chain) or any(
        m in t for t in texts for m in _CAPTURE_MARKERS
    ):
        return CaptureFailure.UNCAPTURABLE_OP
    return CaptureFailure.SEGMENT_NOT_CAPTURED if segment else CaptureFailure.ERROR


def root_cause(exc: BaseException) -> BaseException:
    """The first error of a chain: the one that says what the model did wrong."""
    return _exception_chain(exc)[-1]


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
