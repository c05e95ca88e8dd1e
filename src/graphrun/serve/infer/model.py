"""A tensor model as the engine host's served model: requests queue in the batcher, a step runs one batch.

submit() validates nothing (the HTTP side did, against the schema this model published in info()) and
queues the request in its bucket. The host loop steps while the batcher has a ready batch; while
requests wait for their batch to fill or their wait to pass, `has_idle_work` keeps the loop polling and
`idle_work` sleeps a short slice, so requests arriving meanwhile are submitted before the batch is taken.
A step takes one batch of one bucket and hands it to the model's calls (calls.py): batch-only models
concatenate the rows and make one GraphRunner call (rows.py); models that declare more dynamic dims pad
each request to the bucket, stack them and make one BucketedRunner call (bucketed.py); either splits the
outputs back per request. A request above the top rung runs alone, as top-rung chunks, each a replay:
eager on an unbounded batch could take the device's memory at once. A call that raises fails that
batch's requests only; the model keeps serving. submit() keys each request by its bucket (the calls'
`key`: BucketedRunner.bucket_of), here on the engine side where the runner is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from prometheus_client import CollectorRegistry

from graphrun.serve.config import ServeConfig
from graphrun.serve.host.host_loop import HostPlan
from graphrun.serve.host.messages import Ended, Submission
from graphrun.serve.host.served_model import StepOutcome
from graphrun.serve.host.transport import PipeTransport, ThreadTransport, Transport
from graphrun.serve.infer.batcher import Batcher, Pending
from graphrun.serve.infer.batching_model import BatchingModel
from graphrun.serve.infer.bucketed import BucketedCalls
from graphrun.serve.infer.calls import Arrays, ModelCalls
from graphrun.serve.infer.client import InferClient
from graphrun.serve.infer.config import InferConfig
from graphrun.serve.infer.exported import load_exported
from graphrun.serve.infer.messages import InferInfo, InferResult, InferSubmit
from graphrun.serve.infer.metrics import InferMetrics
from graphrun.serve.infer.rows import RowCalls
from graphrun.serve.infer.schema import InferSchema
from graphrun.serve.infer.source import ModelSource, load_module_factory

log = logging.getLogger(__name__)


def infer_client(infer_config: InferConfig, serve_config: ServeConfig) -> InferClient:
    """The client of a tensor model's engine host (a process of its own, or a thread); up to
    `max_queue` requests in flight (queued or running), 429 beyond."""
    plan = HostPlan(partial(InferServedModel, infer_config))
    transport: Transport[InferInfo, InferResult]
    transport = PipeTransport(plan) if serve_config.engine_process else ThreadTransport(plan)
    return InferClient(transport, max(1, serve_config.max_queue))


@dataclass(frozen=True, slots=True)
class _Queued:
    pending: Pending
    tensors: Arrays


class InferServedModel(BatchingModel[_Queued]):
    """A ModelSource's calls (a GraphRunner, a BucketedRunner over its declared dims, or an ONNX model's
    OrtRunner), fed by a Batcher; its series in a registry of its own."""

    source: ModelSource  # set by _calls()
    metrics: InferMetrics

    def __init__(self, config: InferConfig) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.metrics = InferMetrics(self.registry)
        self.calls: ModelCalls = self._calls(config)
        rungs = self.calls.rungs
        self.schema = InferSchema(
            self.source.input_specs(),
            self.calls.outputs,
            rungs,
            config.max_rows,
            self.calls.dims,
            self.source.mask,
        )
        self.batcher = Batcher(rungs[-1], config.max_wait_ms / 1000, config.max_batch_requests)
        self._queued: dict[int, _Queued] = {}
        dims = "".join(f" x {dim.name} {list(dim.ladder)}" for dim in self.calls.dims)
        log.info(
            "serving %s on %s (inputs %s; batch rungs %s%s, graphs %s; wait %.1f ms, requests a call %s)",
            config.source, self.source.device, [s.name for s in self.schema.inputs],
            list(rungs), dims, self.calls.graphs(), config.max_wait_ms, config.max_batch_requests or "any",
        )  # fmt: skip

    def _calls(self, config: InferConfig) -> ModelCalls:
        """The model's calls, and `source` set: an ONNX model's OrtRunner, else a GraphRunner over the
        source (a BucketedRunner where it declares dims besides the batch)."""
        if config.onnx is not None:
            from graphrun.serve.infer.onnx_calls import OrtCalls  # needs onnxruntime (graphrun[onnx])

            ort_calls = OrtCalls(config, self.registry, self.metrics)
            self.source = ort_calls.source
            return ort_calls
        self.source = _load_source(config)
        kind = BucketedCalls if self.source.dims else RowCalls
        return kind(self.source, config, self.registry, self.metrics)

    def info(self) -> InferInfo:
        return InferInfo(
            self.schema,
            self.config.source,
            str(self.source.device),
            self.calls.backend(),
            self.config.max_wait_ms,
            os.getpid(),
        )

    def submit(self, submit: Submission) -> list[int | Exception]:
        if not isinstance(submit, InferSubmit):
            return [TypeError("a tensor model takes /v1/infer requests, not prompts")] * len(
                submit.request_ids
            )
        (request_id,) = submit.request_ids
        tensors = dict(submit.tensors)
        pending = Pending(request_id, submit.rows, self.calls.key(tensors), submit.arrival)
        return self._enqueue(_Queued(pending, tensors))

    def step(self, on_launched: Callable[[], None]) -> StepOutcome[InferResult]:
        taken = self._take()
        if taken is None:
            return StepOutcome([], None)
        batch, queued = taken
        try:
            outputs = self.calls.run(batch.key, [q.tensors for q in queued], on_launched)
        except Exception:
            log.exception("a model call of %d rows failed; failing its %d requests", batch.rows, len(queued))
            return self._failed(queued, "the model call running this request failed (see the server log)")
        events: list[tuple[int, InferResult | Ended]] = [
            (q.pending.request_id, InferResult(tuple(out.items())))
            for q, out in zip(queued, outputs, strict=True)
        ]
        return StepOutcome(events, None)

    def _device(self) -> torch.device:
        return self.source.device

    def _graphs(self) -> str:
        return self.calls.graphs()


def _load_source(config: InferConfig) -> ModelSource:
    if config.module is not None:
        return load_module_factory(config.module)
    assert config.exported is not None  # InferConfig holds exactly one
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rungs = {(name, axis): ladder for name, axis, ladder in config.dim_rungs}
    return load_exported(config.exported, torch.device(device), rungs, config.mask_input)
