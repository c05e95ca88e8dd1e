"""What a served model fed by a Batcher does the same whatever it runs (a tensor model at /v1/infer, a
policy at /act): queueing, aborting and taking requests, batch metrics, a failed call's events, drain,
the host loop's idle waits, and the counters it answers.

A subclass sets `registry`, `metrics`, `batcher` and `_queued` (its requests by id, each with its
Pending) in its constructor, and says where it runs (`_device`) and how many graphs it holds
(`_graphs`)."""

from __future__ import annotations

import time
from typing import Any, Generic, Protocol, TypeVar

import torch
from prometheus_client import CollectorRegistry, generate_latest

from graphrun.serve.host.messages import EngineFailure, Question
from graphrun.serve.host.served_model import StepOutcome
from graphrun.serve.infer.batcher import Batch, Batcher, Pending
from graphrun.serve.infer.metrics import BatchMetrics
from graphrun.serve.memory import memory_now

IDLE_SLICE_SECONDS = 0.0002  # while a batch waits: the longest sleep between looks at the host's inbox


class Queued(Protocol):
    """A queued request as its served model keeps it: its Pending, and whatever its call needs."""

    @property
    def pending(self) -> Pending: ...


Q = TypeVar("Q", bound=Queued)


class BatchingModel(Generic[Q]):
    registry: CollectorRegistry
    metrics: BatchMetrics
    batcher: Batcher
    _queued: dict[int, Q]

    def _device(self) -> torch.device:
        raise NotImplementedError

    def _graphs(self) -> str:
        raise NotImplementedError

    def _enqueue(self, queued: Q) -> list[int | Exception]:
        """Queue a submitted request; submit()'s answer (its id)."""
        request_id = queued.pending.request_id
        self._queued[request_id] = queued
        self.batcher.add(queued.pending)
        return [request_id]

    def abort(self, request_id: int) -> bool:
        if self._queued.pop(request_id, None) is None:
            return False
        self.batcher.remove(request_id)
        return True

    def _take(self) -> tuple[Batch, list[Q]] | None:
        """The next ready batch and its requests (no longer queued), its series observed; None: none ready."""
        now = time.monotonic()
        batch = self.batcher.take(now)
        if batch is None:
            return None
        queued = [self._queued.pop(request.request_id) for request in batch.requests]
        self._observe(batch, now)
        return batch, queued

    @staticmethod
    def _failed(queued: list[Q], why: str) -> StepOutcome[Any]:
        """A failed call's outcome: each of its requests ends with EngineFailure(why) (a 500)."""
        return StepOutcome([(q.pending.request_id, EngineFailure(why)) for q in queued], None)

    def _observe(self, batch: Batch, now: float) -> None:
        self.metrics.batch_rows.observe(batch.rows)
        self.metrics.batch_requests.observe(len(batch.requests))
        for request in batch.requests:
            self.metrics.queue_wait.observe(max(0.0, now - request.arrival))

    def drain(self) -> list[int]:
        self.batcher.drain()
        request_ids = list(self._queued)
        self._queued.clear()
        return request_ids

    def busy(self) -> bool:
        return self.batcher.ready(time.monotonic())

    def has_idle_work(self) -> bool:
        return len(self.batcher) > 0  # a batch is waiting for its deadline or more rows

    def idle_work(self) -> None:
        left = self.batcher.wait_left(time.monotonic())
        if left:
            time.sleep(min(left, IDLE_SLICE_SECONDS))

    def publish(self, num_queued: int) -> None:
        return None

    def close(self) -> None:
        return None

    def answer(self, question: Question) -> bytes | dict[str, Any] | str | None:
        """Counters only (any thread)."""
        if question is Question.METRICS:
            return generate_latest(self.registry)
        if question is Question.MEMORY:
            return dict(memory_now(self._device()))
        return self._graphs()
