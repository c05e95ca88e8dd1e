"""The HTTP side's client of a tensor model's engine host: the host's client (host/client.py) plus
validated tensors in, one InferResult (or an error) out."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from graphrun.serve.host.client import EngineClient
from graphrun.serve.host.handle import RequestHandle
from graphrun.serve.infer.messages import InferInfo, InferResult, InferSubmit


class InferClient(EngineClient[InferInfo, InferResult]):
    """submit_tensors over a tensor served model (model.py); `model` is its InferInfo (the schema)."""

    def submit_tensors(
        self, tensors: tuple[tuple[str, np.ndarray], ...], rows: int
    ) -> RequestHandle[InferResult]:
        """Queue one tensor request (validated against model.schema); raises Unavailable or QueueFull.
        Its handle's one event is an InferResult, or an error (ABORTED after an abort)."""
        handle = RequestHandle(next(self._ids), asyncio.get_running_loop(), self._on_done)
        self.submit([handle], InferSubmit((handle.request_id,), tensors, rows, time.monotonic()))
        return handle
