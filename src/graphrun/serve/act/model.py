"""A policy as the engine host's served model: observations queue in the batcher, a step runs one act().

Construction is the pipeline's start-up probe: when it returns, every stage is captured or has fallen
back (a stage that could not capture runs eager alone), and only then does the host send Ready, so /health
answers 503 until then and 200 with each stage's tier after. submit() validates nothing (the HTTP side
did, against the schema published in info()) and queues the request. A step takes one batch (the
requests coalesced within --batch-wait-ms, up to the top rung's rows: infer/batcher.py), concatenates
their rows into one pipeline input keyed per request for the prefix cache (pipeline/rows.py), runs act()
once (each stage's runner pads the rows to its rung) and splits the action chunk back by rows. A call
that raises fails that batch's requests only; the policy keeps serving.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.sizes import default_ladder, normalize_ladder
from graphrun.pipeline.rows import RowKeys
from graphrun.serve.act.client import ActClient
from graphrun.serve.act.config import ActConfig
from graphrun.serve.act.loading import load_policy
from graphrun.serve.act.messages import ActInfo, ActResult, ActSubmit, StageInfo
from graphrun.serve.act.metrics import ActMetrics
from graphrun.serve.act.schema import ActSchema
from graphrun.serve.act.source import PolicySettings
from graphrun.serve.config import ServeConfig
from graphrun.serve.host.host_loop import HostPlan
from graphrun.serve.host.messages import Ended, Submission
from graphrun.serve.host.served_model import StepOutcome
from graphrun.serve.host.transport import PipeTransport, ThreadTransport, Transport
from graphrun.serve.infer.batcher import Batcher, Pending
from graphrun.serve.infer.batching_model import BatchingModel
from graphrun.serve.infer.calls import graphs_summary, to_wire
from graphrun.serve.infer.schema import BucketKey

log = logging.getLogger(__name__)


def act_client(act_config: ActConfig, serve_config: ServeConfig) -> ActClient:
    """The client of a served policy's engine host (a process of its own, or a thread); up to
    `max_queue` requests in flight, 429 beyond."""
    plan = HostPlan(partial(ActServedModel, act_config))
    transport: Transport[ActInfo, ActResult]
    transport = PipeTransport(plan) if serve_config.engine_process else ThreadTransport(plan)
    return ActClient(transport, max(1, serve_config.max_queue))


def policy_settings(config: ActConfig, registry: CollectorRegistry) -> PolicySettings:
    """Device, dtype, ladder and the stages' graph options from the served policy's settings."""
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    dtype = config.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    ladder = normalize_ladder(config.cuda_graph_sizes) if config.cuda_graph_sizes else None
    ladder = ladder or default_ladder(config.cuda_graph_max_bs)
    options = RunnerOptions(
        sizes=ladder,
        backend=config.graph_backend,
        verify=config.verify,
        registry=registry,
        mode="none" if config.enforce_eager else "full",
    )
    return PolicySettings(device, getattr(torch, dtype), ladder, options, config.denoising_steps)


@dataclass(frozen=True, slots=True)
class _Queued:
    pending: Pending
    tensors: dict[str, np.ndarray]
    observation_id: str | None


class ActServedModel(BatchingModel[_Queued]):
    """A PolicySource's pipeline fed by a Batcher; its series and the pipeline's in a registry of its own."""

    def __init__(self, config: ActConfig) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.metrics = ActMetrics(self.registry)
        self.settings = policy_settings(config, self.registry)
        self.source = load_policy(config.policy, self.settings)
        s = self.source
        self.schema = ActSchema(s.inputs, s.output, self.settings.ladder, s.optional, s.ranges)
        self.batcher = Batcher(self.schema.max_rows, config.max_wait_ms / 1000, config.max_batch_requests)
        self._queued: dict[int, _Queued] = {}
        log.info(
            "serving policy %s on %s %s (stages %s; batch rungs %s; wait %.1f ms, requests a call %s)",
            config.policy, self.settings.device, self.settings.dtype,
            ", ".join(str(r) for r in s.pipeline.reports), list(self.settings.ladder), config.max_wait_ms,
            config.max_batch_requests or "any",
        )  # fmt: skip

    def info(self) -> ActInfo:
        stages = tuple(
            StageInfo(r.stage, r.tier.value, r.reason.value if r.reason is not None else None,
                      r.num_captured, r.num_rungs)
            for r in self.source.pipeline.reports
        )  # fmt: skip
        return ActInfo(
            self.schema,
            self.config.policy,
            str(self.settings.device),
            str(self.settings.dtype).removeprefix("torch."),
            self._backend(),
            stages,
            self.config.denoising_steps,
            self.config.max_wait_ms,
            os.getpid(),
        )

    def _backend(self) -> str:
        return self.source.pipeline.stages[0].runner.status().backend

    def submit(self, submit: Submission) -> list[int | Exception]:
        if not isinstance(submit, ActSubmit):
            return [TypeError("a policy takes /act observations, not this request")] * len(submit.request_ids)
        (request_id,) = submit.request_ids
        pending = Pending(request_id, submit.rows, BucketKey(), submit.arrival)
        return self._enqueue(_Queued(pending, dict(submit.tensors), submit.observation_id))

    def step(self, on_launched: Callable[[], None]) -> StepOutcome[ActResult]:
        taken = self._take()
        if taken is None:
            return StepOutcome([], None)
        batch, queued = taken
        try:
            actions = self._act(queued)
            on_launched()
            wire = to_wire(actions).astype(self.schema.output.dtype, copy=False)  # the dtype /v1/models gives
            chunks = np.split(wire, np.cumsum([q.pending.rows for q in queued])[:-1])
        except Exception:
            log.exception("an act() of %d rows failed; failing its %d requests", batch.rows, len(queued))
            return self._failed(queued, "the policy call running this request failed (see the server log)")
        events: list[tuple[int, ActResult | Ended]] = [
            (q.pending.request_id, ActResult(chunk)) for q, chunk in zip(queued, chunks, strict=True)
        ]
        return StepOutcome(events, None)

    def _act(self, queued: list[_Queued]) -> torch.Tensor:
        """One act() over every request's rows, the prefix keyed per request by its observation id."""
        ids = [q.observation_id for q in queued]
        keys = (
            RowKeys(tuple((i, q.pending.rows) for i, q in zip(ids, queued, strict=True)))
            if any(ids)
            else None
        )
        with torch.inference_mode():
            actions = self.source.pipeline.act(self.source.batch([q.tensors for q in queued], keys))
        if not isinstance(actions, torch.Tensor):
            raise TypeError(
                f"the policy's act() must return one tensor (the action chunk), got {type(actions)}"
            )
        return actions

    def _device(self) -> torch.device:
        return self.settings.device

    def _graphs(self) -> str:
        statuses = [rung for stage in self.source.pipeline.stages for rung in stage.runner.status()]
        return graphs_summary(sum(rung.captured for rung in statuses), len(statuses))
