"""A tensor model as the engine host's served model: requests queue in the batcher, a step runs one batch.

submit() validates nothing (the HTTP side did, against the schema this model published in info()) and
queues the request in its bucket. The host loop steps while the batcher has a ready batch; while
requests wait for their batch to fill or their wait to pass, `has_idle_work` keeps the loop polling and
`idle_work` sleeps a short slice, so requests arriving meanwhile are submitted before the batch is taken.
A step takes one batch of one bucket, concatenates its inputs, makes one runner call (the runner pads to
the rung, replays and slices back; eager where no graph fits) and splits the outputs back into each
request's rows. A request above the top rung runs alone, as top-rung chunks, each a replay: eager on an
unbounded batch could take the device's memory at once. A call that raises fails that batch's requests
only; the model keeps serving.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry, generate_latest

from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.runner import GraphRunner
from graphrun.serve.config import ServeConfig
from graphrun.serve.host.client import EngineClient
from graphrun.serve.host.host_loop import HostPlan
from graphrun.serve.host.messages import (
    AnySubmit,
    EngineFailure,
    Event,
    InferInfo,
    InferResult,
    InferSubmit,
    Question,
)
from graphrun.serve.host.served_model import StepOutcome
from graphrun.serve.host.transport import PipeTransport, ThreadTransport, Transport
from graphrun.serve.infer.batcher import Batch, Batcher, Pending
from graphrun.serve.infer.config import InferConfig
from graphrun.serve.infer.metrics import InferMetrics
from graphrun.serve.infer.schema import InferSchema
from graphrun.serve.infer.source import (
    ModelSource,
    load_exported,
    load_module_factory,
    named_outputs,
    output_specs,
)
from graphrun.serve.memory import memory_now

log = logging.getLogger(__name__)
IDLE_SLICE_SECONDS = 0.0002  # while a batch waits: the longest sleep between looks at the host's inbox
Arrays = dict[str, np.ndarray]


def infer_client(infer_config: InferConfig, serve_config: ServeConfig) -> EngineClient:
    """The client of a tensor model's engine host (a process of its own, or a thread); up to
    `max_queue` requests in flight (queued or running), 429 beyond."""
    plan = HostPlan(partial(InferServedModel, infer_config))
    transport: Transport = PipeTransport(plan) if serve_config.engine_process else ThreadTransport(plan)
    return EngineClient(transport, max(1, serve_config.max_queue))


@dataclass(frozen=True, slots=True)
class _Queued:
    pending: Pending
    tensors: Arrays


class InferServedModel:
    """A GraphRunner over a ModelSource, fed by a Batcher; its series in a registry of its own."""

    def __init__(self, config: InferConfig) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.metrics = InferMetrics(self.registry)
        self.source = _load_source(config)
        self._examples = dict(self.source.example)  # each input's dtype and device
        self.runner = self._build_runner()
        self.schema = InferSchema(
            self.source.input_specs(), output_specs(self.source), self.runner.sizes, config.max_rows
        )
        self.batcher = Batcher(self.runner.sizes[-1], config.max_wait_ms / 1000, config.max_batch_requests)
        self._queued: dict[int, _Queued] = {}
        captured = [rung.size for rung in self.runner.status() if rung.captured]
        log.info(
            "serving %s on %s (inputs %s; rungs %s, captured %s; batch wait %.1f ms, requests a call %s)",
            config.source, self.source.device, [s.name for s in self.schema.inputs],
            list(self.runner.sizes), captured, config.max_wait_ms, config.max_batch_requests or "any",
        )  # fmt: skip

    def _build_runner(self) -> GraphRunner:
        config, source = self.config, self.source
        options = RunnerOptions(
            sizes=config.cuda_graph_sizes or None,
            max_batch_size=None if config.cuda_graph_sizes else config.cuda_graph_max_bs,
            backend=config.graph_backend,
            verify=config.verify,
            registry=self.registry,
            name="infer",
            mode="none" if config.enforce_eager else "full",
        )
        args, kwargs = source.call_args(dict(source.example))
        return GraphRunner(source.fn, args, kwargs, options=options)

    def info(self) -> InferInfo:
        backend = self.runner.status().backend
        return InferInfo(
            self.schema,
            self.config.source,
            str(self.source.device),
            backend,
            self.config.max_wait_ms,
            os.getpid(),
        )

    def submit(self, submit: AnySubmit) -> list[int | Exception]:
        if not isinstance(submit, InferSubmit):
            return [TypeError("a tensor model takes /v1/infer requests, not prompts")] * len(
                submit.request_ids
            )
        (request_id,) = submit.request_ids
        pending = Pending(request_id, submit.rows, submit.key, submit.arrival)
        self._queued[request_id] = _Queued(pending, dict(submit.tensors))
        self.batcher.add(pending)
        return [request_id]

    def abort(self, request_id: int) -> bool:
        if self._queued.pop(request_id, None) is None:
            return False
        self.batcher.remove(request_id)
        return True

    def step(self, on_launched: Callable[[], None]) -> StepOutcome:
        now = time.monotonic()
        batch = self.batcher.take(now)
        if batch is None:
            return StepOutcome([], None)
        queued = [self._queued.pop(request.request_id) for request in batch.requests]
        self._observe(batch, now)
        try:
            outputs = self._run(queued, on_launched)
        except Exception:
            log.exception("a model call of %d rows failed; failing its %d requests", batch.rows, len(queued))
            why = "the model call running this request failed (see the server log)"
            return StepOutcome([(q.pending.request_id, EngineFailure(why)) for q in queued], None)
        return StepOutcome(_split(queued, outputs), None)

    def _observe(self, batch: Batch, now: float) -> None:
        self.metrics.batch_rows.observe(batch.rows)
        self.metrics.batch_requests.observe(len(batch.requests))
        for request in batch.requests:
            self.metrics.queue_wait.observe(max(0.0, now - request.arrival))

    def _run(self, queued: list[_Queued], on_launched: Callable[[], None]) -> Arrays:
        """One runner call per top-rung chunk of the batch's rows (one call unless a request is oversized);
        each chunk's outputs are copied to the host before the next call overwrites the static buffers."""
        names = [spec.name for spec in self.schema.inputs]
        inputs = {name: np.concatenate([q.tensors[name] for q in queued]) for name in names}
        total, top = sum(q.pending.rows for q in queued), self.batcher.max_rows
        chunks: list[Arrays] = []
        for start in range(0, total, top):
            outputs = self._launch({name: array[start : start + top] for name, array in inputs.items()})
            if start == 0:
                on_launched()  # the previous step's held events go out while this one computes
            chunks.append({name: _to_wire(tensor) for name, tensor in outputs.items()})
        if len(chunks) == 1:
            return chunks[0]
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}

    def _launch(self, inputs: Arrays) -> dict[str, torch.Tensor]:
        """One runner call (padded to its rung, replayed; eager where no graph fits); outputs by name."""
        rows = next(iter(inputs.values())).shape[0]
        rung = self.runner.rung_for(rows)
        if rung is not None:
            self.metrics.padding_ratio.observe((rung - rows) / rung)
        tensors = {name: self._to_model(name, array) for name, array in inputs.items()}
        args, kwargs = self.source.call_args(tensors)
        return named_outputs(self.runner(*args, **kwargs))

    def _to_model(self, name: str, array: np.ndarray) -> torch.Tensor:
        example = self._examples[name]
        return torch.from_numpy(array).to(example.device, example.dtype)

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

    def answer(self, question: Question) -> bytes | dict[str, Any] | str | None:
        """Counters only (any thread)."""
        if question is Question.METRICS:
            return generate_latest(self.registry)
        if question is Question.MEMORY:
            return dict(memory_now(self.source.device))
        statuses = list(self.runner.status())
        if all(not rung.captured for rung in statuses):
            return "off"
        return f"captured {sum(rung.captured for rung in statuses)}/{len(statuses)}"


def _load_source(config: InferConfig) -> ModelSource:
    if config.module is not None:
        return load_module_factory(config.module)
    assert config.exported is not None  # InferConfig holds exactly one
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_exported(config.exported, torch.device(device))


def _to_wire(tensor: torch.Tensor) -> np.ndarray:
    """A copy on the host in a wire dtype (bfloat16 travels as float32)."""
    dtype = torch.float32 if tensor.dtype == torch.bfloat16 else tensor.dtype
    return tensor.detach().to("cpu", dtype, copy=True).numpy()


def _split(queued: list[_Queued], outputs: Arrays) -> list[tuple[int, Event]]:
    """Each request's rows of the batch's outputs, as its InferResult."""
    events: list[tuple[int, Event]] = []
    start = 0
    for q in queued:
        end = start + q.pending.rows
        result = InferResult(tuple((name, array[start:end]) for name, array in outputs.items()))
        events.append((q.pending.request_id, result))
        start = end
    return events
