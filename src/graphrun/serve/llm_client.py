"""The HTTP side's client of an LLM engine host: the host's client (host/client.py) plus prompts in and
text deltas out."""

from __future__ import annotations

import asyncio
import time
from functools import partial

from graphrun.llm.sampling_params import SamplingParams
from graphrun.serve.deltas import Deltas
from graphrun.serve.host.client import EngineClient
from graphrun.serve.llm_handle import LLMHandle
from graphrun.serve.llm_messages import Event, ModelInfo, Submit


class LLMClient(EngineClient[ModelInfo, Event]):
    """submit_choices / deltas over an LLM served model (llm_model.py)."""

    def submit_choices(
        self, prompt_ids: list[int], params: SamplingParams, stop: tuple[str, ...], n: int = 1
    ) -> list[LLMHandle]:
        """Queue n choices of one prompt (one prefill; choice j seeded seed + j), each its own handle and
        each counted in flight; raises Unavailable (503) or QueueFull (429)."""
        loop = asyncio.get_running_loop()
        handles = [LLMHandle(next(self._ids), prompt_ids, stop, loop, self._on_done, j) for j in range(n)]
        ids = tuple(handle.request_id for handle in handles)
        self.submit(handles, Submit(ids, tuple(prompt_ids), params, time.monotonic()))
        return handles

    def deltas(self, handle: LLMHandle, every_batch: bool = False) -> Deltas:
        """What turns an admitted request's tokens into text deltas (stop strings abort it here)."""
        return Deltas(self.model.tokenizer, handle, partial(self.abort, handle), every_batch)
