"""The HTTP side's client of a served policy's engine host: the host's client (host/client.py) plus one
validated observation in, one ActResult (or an error) out."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from graphrun.serve.act.messages import ActInfo, ActResult, ActSubmit
from graphrun.serve.host.client import EngineClient
from graphrun.serve.host.handle import RequestHandle


class ActClient(EngineClient[ActInfo, ActResult]):
    """submit_observation over a served policy (model.py); `model` is its ActInfo (the schema)."""

    def submit_observation(
        self, tensors: tuple[tuple[str, np.ndarray], ...], rows: int, observation_id: str | None
    ) -> RequestHandle[ActResult]:
        """Queue one observation (validated against model.schema); raises Unavailable or QueueFull.
        Its handle's one event is an ActResult, or an error (ABORTED after an abort)."""
        handle = RequestHandle(next(self._ids), asyncio.get_running_loop(), self._on_done)
        submit = ActSubmit((handle.request_id,), tensors, rows, observation_id, time.monotonic())
        self.submit([handle], submit)
        return handle
