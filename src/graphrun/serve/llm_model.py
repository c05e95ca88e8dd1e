"""The LLM engine as a served model (host/served_model.py), and the client that serves it.

The adapter knows the engine's sequences, the host knows the client's request ids: this maps one to
the other, turns each step's outputs into the requests' events and observes the token metrics.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.serve.config import ServeConfig
from graphrun.serve.host.host_loop import HostPlan
from graphrun.serve.host.messages import Question, Submission
from graphrun.serve.host.served_model import StepOutcome
from graphrun.serve.host.transport import PipeTransport, ThreadTransport, Transport
from graphrun.serve.llm_client import LLMClient
from graphrun.serve.llm_messages import Event, ModelInfo, PromptCached, PromptLogprobs, Submit
from graphrun.serve.llm_metrics import EngineMetrics
from graphrun.serve.memory import memory_now
from graphrun.serve.trace import send_trace, step_trace

log = logging.getLogger(__name__)


def llm_client(engine_config: EngineConfig, serve_config: ServeConfig) -> LLMClient:
    """The client of an LLM engine host: in a process of its own, or a thread (serve_config says)."""
    build_model = partial(LLMServedModel, engine_config, serve_config)
    plan = HostPlan(build_model, partial(step_trace, serve_config.trace_path))
    transport: Transport[ModelInfo, Event]
    transport = PipeTransport(plan) if serve_config.engine_process else ThreadTransport(plan)
    limit = engine_config.max_num_seqs + serve_config.max_queue
    return LLMClient(transport, limit, send_trace(serve_config.trace_path))


@dataclass(slots=True)
class _Running:
    request_id: int
    arrival: float  # time.monotonic() at submission
    last_token_time: float | None = None


class LLMServedModel:
    """An LLMEngine driven by the host loop; its series live in a registry of their own."""

    def __init__(self, engine_config: EngineConfig, serve_config: ServeConfig) -> None:
        self.registry = CollectorRegistry()
        self.metrics = EngineMetrics(self.registry)
        self.engine = engine = LLMEngine(engine_config, registry=self.registry)
        self._running: dict[int, _Running] = {}  # by seq id: admitted, not finished
        self._seq_ids: dict[int, int] = {}  # request id -> seq id
        self._facts = {
            **engine.describe(),
            "max_model_len": engine.max_model_len,
            "vocab_size": engine.model_config.vocab_size,
            "kv_cache_bytes": engine.num_blocks * engine.kv_spec.bytes_per_block,
            "engine_pid": os.getpid(),
        }
        _log_serving(self._facts, engine_config, serve_config)

    def info(self) -> ModelInfo:
        engine = self.engine
        facts = self._facts
        return ModelInfo(
            engine.tokenizer, facts["vocab_size"], engine.max_model_len, engine.config.model, facts
        )

    def submit(self, submit: Submission) -> list[int | Exception]:
        """One request, or the n choices of one prompt as one group (one prefill): all in or all out."""
        if not isinstance(submit, Submit):
            return [TypeError("an LLM takes prompts, not tensors (/v1/infer)")]
        prompt_ids, num = list(submit.prompt_ids), len(submit.request_ids)
        try:
            if num == 1:
                seq_ids = [self.engine.add_request(prompt_ids, submit.params)]
            else:
                seq_ids = self.engine.add_choices(prompt_ids, submit.params, num)
        except Exception as exc:  # RequestRejected / SamplingParamsError: 400; anything else: 500 for it only
            return [exc] * num
        self.metrics.prompt_tokens.inc(len(prompt_ids))
        for request_id, seq_id in zip(submit.request_ids, seq_ids, strict=True):
            self._running[seq_id] = _Running(request_id, submit.arrival)
            self._seq_ids[request_id] = seq_id
        return list(seq_ids)

    def abort(self, request_id: int) -> bool:
        seq_id = self._seq_ids.pop(request_id, None)
        if seq_id is None:
            return False
        self.engine.abort(seq_id)
        del self._running[seq_id]
        return True

    def step(self, on_launched: Callable[[], None]) -> StepOutcome[Event]:
        outputs = self.engine.step(on_launched=on_launched)
        now = time.monotonic()
        events: list[tuple[int, Event]] = []
        num_tokens = 0
        for out in outputs:
            request = self._running.get(out.seq_id)
            if request is None:
                continue  # aborted while the step ran
            num_tokens += 1
            rid, last = request.request_id, request.last_token_time
            if last is None and out.num_cached_tokens:
                events.append((rid, PromptCached(out.num_cached_tokens)))
            self.metrics.observe_token(last is None, now - (request.arrival if last is None else last))
            request.last_token_time = now
            if out.prompt_logprobs is not None:
                events.append((rid, PromptLogprobs(out.prompt_logprobs)))
            if out.logprobs is not None:  # just before its token's event (deltas.py pairs them)
                events.append((rid, out.logprobs))
            events.append((rid, (out.new_token_id, (out.finish_reason or "stop") if out.finished else None)))
            if out.finished:
                del self._running[out.seq_id], self._seq_ids[rid]
        self.metrics.generation_tokens.inc(num_tokens)
        return StepOutcome(events, self.engine.last_step_timing)

    def drain(self) -> list[int]:
        for seq_id in self._running:
            self.engine.abort(seq_id)
        request_ids = [request.request_id for request in self._running.values()]
        self._running.clear()
        self._seq_ids.clear()
        return request_ids

    def busy(self) -> bool:
        return self.engine.has_unfinished()

    def has_idle_work(self) -> bool:
        return self.engine.capture_pending

    def idle_work(self) -> None:
        self.engine.capture_step()

    def publish(self, num_queued: int) -> None:
        self.metrics.publish(self.engine.scheduler, num_queued)

    def close(self) -> None:
        self.engine.close()

    def answer(self, question: Question) -> bytes | dict[str, Any] | str | None:
        """Counters only (any thread): graph_progress reads plain lists."""
        if question is Question.METRICS:
            return generate_latest(self.registry)
        if question is Question.MEMORY:
            sizes = {key: self._facts.get(key) for key in ("kv_cache_bytes", "graph_pool_mib")}
            return {**memory_now(self.engine.device), **sizes}
        return self.engine.graph_progress()


def _log_serving(facts: dict[str, Any], engine_config: EngineConfig, serve_config: ServeConfig) -> None:
    """The one line that says what the server runs."""
    graphs = f"on, sizes {facts['capture_sizes']}" if facts["decode_graphs"] else "off"
    if facts["decode_graphs"] and engine_config.capture == "background":
        graphs += ", capturing in the background"
    log.info(
        "serving %s on %s (graphs: %s; max_num_seqs %d, max_model_len %d, %d KV blocks, %s %s)",
        serve_config.served_model_name,
        serve_config.url,
        graphs,
        engine_config.max_num_seqs,
        facts["max_model_len"],
        facts["num_kv_blocks"],
        facts["device"],
        facts["dtype"],
    )
