"""The HTTP side's handle on the engine: submit, abort, stream, drain; the engine runs elsewhere.

`EngineWorker` is what the app talks to. Where the engine loop (engine_loop.py) runs is a subclass's
business:
- `ThreadWorker`: a thread of this process. One process, easy to debug; but the engine thread and the
  event loop share one GIL, so the event loop's per-token work (a chunk per stream per step) delays the
  engine's launches.
- `ProcessWorker` (engine_process.py, the server's default): a process of its own, reached through a
  pipe. The engine loop keeps a GIL to itself, as vLLM's engine core does.

Admission control counts requests in flight (submitted, not yet over): beyond max_num_seqs + max_queue
a submission raises `QueueFull` (429). A request is over when its terminal event reaches the event loop
(RequestHandle's on_done). Draining refuses new work and waits for the rest.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from graphrun.envvars import gc_freeze_enabled, gc_gen0_threshold, serve_trace_path
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.tokenizer import Tokenizer
from graphrun.serve.config import ServeConfig
from graphrun.serve.deltas import Deltas
from graphrun.serve.engine_loop import Command, EngineLoop
from graphrun.serve.memory import memory_now
from graphrun.serve.metrics import EngineMetrics, RequestMetrics
from graphrun.serve.request import (
    EngineRequest,
    Event,
    QueueFull,
    RequestHandle,
    Unavailable,
    call_in_loop,
    post_step,
)
from graphrun.serve.trace import SendTrace, StepTrace

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServedModel:
    """What the HTTP side needs of the model: its tokenizer and limits."""

    tokenizer: Tokenizer
    vocab_size: int
    max_model_len: int

    @classmethod
    def of(cls, tokenizer: Tokenizer, info: dict[str, Any]) -> ServedModel:
        """The model an engine_info() describes."""
        return cls(tokenizer, info["vocab_size"], info["max_model_len"])


def engine_info(engine: LLMEngine) -> dict[str, Any]:
    """The engine's start-up facts for /health: describe(), limits and the KV cache's size."""
    return {
        **engine.describe(),
        "max_model_len": engine.max_model_len,
        "vocab_size": engine.model_config.vocab_size,
        "kv_cache_bytes": engine.num_blocks * engine.kv_spec.bytes_per_block,
    }


def engine_memory(engine: LLMEngine | None, info: dict[str, Any]) -> dict[str, Any]:
    """Memory now where the engine runs (counters only: any thread), with the KV cache's and pool's sizes."""
    device = engine.device if engine is not None else None
    sizes = {key: info.get(key) for key in ("kv_cache_bytes", "graph_pool_mib")}
    return {**memory_now(device), **sizes}


def settle_collector() -> None:
    """Once start-up is done: freeze what is alive (unless GRAPHRUN_GC_FREEZE=0), set the gen-0 threshold
    when GRAPHRUN_GC_GEN0_THRESHOLD asks.

    Start-up leaves ~10^6 long-lived objects (torch, the model, FastAPI, pydantic). A full collection
    walks all of them and holds the GIL for tens of milliseconds, which stalls the engine loop and the
    event loop: the tail of the inter-token latency. Frozen objects are never scanned again; garbage
    made while serving is collected as before.
    """
    if gc_freeze_enabled():
        gc.collect()
        gc.freeze()
        log.info("froze %d start-up objects (gc.freeze)", gc.get_freeze_count())
    threshold = gc_gen0_threshold()
    if threshold is not None:
        gc.set_threshold(threshold, *gc.get_threshold()[1:])
        log.info("garbage collector thresholds: %s", gc.get_threshold())


def log_serving(info: dict[str, Any], engine_config: EngineConfig, serve_config: ServeConfig) -> None:
    """The one line that says the server is ready and what it runs."""
    graphs = f"on, sizes {info['capture_sizes']}" if info["decode_graphs"] else "off"
    if info["decode_graphs"] and engine_config.capture == "background":
        graphs += ", capturing in the background"
    log.info(
        "serving %s on %s (graphs: %s; max_num_seqs %d, max_model_len %d, %d KV blocks, %s %s)",
        serve_config.served_model_name,
        serve_config.url,
        graphs,
        engine_config.max_num_seqs,
        info["max_model_len"],
        info["num_kv_blocks"],
        info["device"],
        info["dtype"],
    )


def serve_engine(
    info: dict[str, Any],
    loop: EngineLoop,
    announce: Callable[[], None],
    engine_config: EngineConfig,
    serve_config: ServeConfig,
) -> bool:
    """After start-up, wherever the engine runs: settle the collector, say ready, run the loop to its end,
    write the trace; False when the loop crashed."""
    settle_collector()
    if loop.trace is not None:
        loop.trace.watch_gc()  # collections while serving (start-up's are not the question)
    announce()
    log_serving(info, engine_config, serve_config)
    clean = loop.run()
    if loop.trace is not None:
        loop.trace.write()
    return clean


def make_worker(engine_config: EngineConfig, serve_config: ServeConfig) -> EngineWorker:
    """The worker serve_config asks for: the engine in a process of its own, or in a thread."""
    if serve_config.engine_process:
        from graphrun.serve.engine_process import ProcessWorker

        return ProcessWorker(engine_config, serve_config)
    return ThreadWorker(engine_config, serve_config)


class EngineWorker(ABC):
    """The HTTP side calls start / submit / abort / deltas / drain / stop; subclasses run the engine."""

    def __init__(self, engine_config: EngineConfig, serve_config: ServeConfig) -> None:
        self.engine_config = engine_config
        self.serve_config = serve_config
        self.registry = CollectorRegistry()  # this process's series (/metrics)
        self.metrics = RequestMetrics(self.registry)
        self.info: dict[str, Any] = {}  # engine_info() once started (for /health)
        self._state = "starting"
        self._ready = threading.Event()
        self._cond = threading.Condition()
        self._num_in_flight = 0
        self._request_ids = itertools.count()
        self._model: ServedModel | None = None
        self.trace_path = serve_trace_path()  # the engine loop's steps go there; this side's sends next to it
        path = self.trace_path
        self.send_trace = SendTrace(path.with_name(path.stem + ".sends.json")) if path is not None else None

    # ----- what a subclass provides -----------------------------------------------------------------

    @abstractmethod
    def start(self) -> None:
        """Start the engine (in the background: /health says 503 until it is ready); idempotent."""

    @abstractmethod
    def stop(self, timeout: float = 10.0) -> None:
        """End the engine (requests still in flight fail with 503); any thread."""

    @abstractmethod
    def _send(self, command: str, handle: RequestHandle | None) -> None:
        """Pass a command to the engine loop: submit, abort (the handle's request), abort_all, stop."""

    @abstractmethod
    def _send_choices(self, handles: list[RequestHandle]) -> None:
        """Pass the choices of one prompt to the engine loop as one group (one prefill)."""

    @abstractmethod
    async def memory(self) -> dict[str, Any]:
        """Memory now where the engine runs (engine_memory), for /health."""

    @abstractmethod
    async def graphs(self) -> str | None:
        """The engine's graph progress now ("capturing 3/36", "captured 36/36", "off"); None: no engine."""

    @abstractmethod
    async def metrics_text(self) -> bytes:
        """The Prometheus text of every series: this process's and the engine's."""

    # ----- lifecycle --------------------------------------------------------------------------------

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until start-up finished (or failed); True when ready. Not on the event loop."""
        self._ready.wait(timeout)
        return self._state in ("ready", "draining")

    @property
    def state(self) -> str:
        """The worker's phase: starting, ready, draining, stopping, stopped or failed."""
        return self._state

    @property
    def model(self) -> ServedModel:
        """The served model's tokenizer and limits, once the engine is ready."""
        if self._model is None or self._state not in ("ready", "draining"):
            raise Unavailable(self._state, f"the engine is {self._state}; retry shortly")
        return self._model

    @property
    def num_in_flight(self) -> int:
        """Requests submitted and not yet over."""
        return self._num_in_flight

    def drain(self, timeout: float) -> int:
        """Stop admitting; wait up to `timeout` s for requests in flight; the rest (returned: count) end
        with a 503 error (a last SSE error event, or a 503 answer), never with a finish reason."""
        if self._state == "ready":
            self._state = "draining"
        log.info("draining: %d requests in flight, waiting up to %.0f s", self._num_in_flight, timeout)
        with self._cond:
            self._cond.wait_for(lambda: self._num_in_flight == 0, timeout)
            left = self._num_in_flight
        if left:
            log.warning("drain deadline: ending %d requests with a 503 error", left)
            self._send("abort_all", None)
            with self._cond:
                self._cond.wait_for(lambda: self._num_in_flight == 0, 5.0)
        return left

    def _became_ready(self, info: dict[str, Any], model: ServedModel) -> None:
        self.info, self._model = info, model
        if self.send_trace is not None:
            self.send_trace.gc.watch()
        if self._state == "starting":
            self._state = "ready"
        self._ready.set()

    def _stopped(self) -> None:
        """The engine is gone: write the send trace, if tracing."""
        if self.send_trace is not None:
            self.send_trace.write()

    # ----- requests (event loop) --------------------------------------------------------------------

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, stop: tuple[str, ...] = ()
    ) -> RequestHandle:
        """Queue a request for the engine; raises Unavailable (503) or QueueFull (429)."""
        return self.submit_choices(prompt_ids, params, stop, 1)[0]

    def submit_choices(
        self, prompt_ids: list[int], params: SamplingParams, stop: tuple[str, ...], n: int
    ) -> list[RequestHandle]:
        """Queue n choices of one prompt (one prefill; choice j seeded seed + j), each its own handle and
        each counted in flight; raises Unavailable (503) or QueueFull (429)."""
        if self._state != "ready":
            raise Unavailable(self._state, f"the server is {self._state}; retry shortly")
        limit = self.engine_config.max_num_seqs + self.serve_config.max_queue
        with self._cond:
            if self._num_in_flight + n > limit:
                message = f"{self._num_in_flight} requests in flight, {n} more asked (limit {limit})"
                raise QueueFull(message + "; retry shortly")
            self._num_in_flight += n
        loop = asyncio.get_running_loop()
        handles = [
            RequestHandle(next(self._request_ids), prompt_ids, params, stop, loop, self._on_done, j)
            for j in range(n)
        ]
        if n == 1:
            self._send("submit", handles[0])
        else:
            self._send_choices(handles)
        return handles

    def abort(self, handle: RequestHandle) -> None:
        """Stop a request and free its KV blocks (a request that is over is left alone)."""
        if not handle.done:
            self._send("abort", handle)

    def deltas(self, handle: RequestHandle, every_batch: bool = False) -> Deltas:
        """What turns an admitted request's tokens into text deltas (stop strings abort it here)."""
        return Deltas(self.model.tokenizer, handle, partial(self.abort, handle), every_batch)

    def _on_done(self, handle: RequestHandle) -> None:
        """(event loop) The request's terminal event arrived: it no longer counts as in flight."""
        with self._cond:
            self._num_in_flight -= 1
            self._cond.notify_all()


class ThreadWorker(EngineWorker):
    """The engine loop on a thread of this process; one registry holds every series."""

    def __init__(self, engine_config: EngineConfig, serve_config: ServeConfig) -> None:
        super().__init__(engine_config, serve_config)
        self.engine_metrics = EngineMetrics(self.registry)
        self._inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="graphrun-engine", daemon=True)
        self._engine: LLMEngine | None = None
        self.trace = StepTrace(self.trace_path) if self.trace_path is not None else None

    def start(self) -> None:
        if not self._thread.is_alive() and self._state == "starting":
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._state in ("ready", "draining"):
            self._state = "stopping"
        if self._thread.is_alive():
            self._inbox.put(("stop", None))
            self._thread.join(timeout)
        if self._state != "failed":
            self._state = "stopped"
        self._stopped()

    def _send(self, command: str, handle: RequestHandle | None) -> None:
        payload: Any = None
        if command == "submit" and handle is not None:
            payload = EngineRequest(handle, handle.prompt_ids, handle.params, handle.arrival)
        elif command == "abort":
            payload = handle
        self._inbox.put((command, payload))

    def _send_choices(self, handles: list[RequestHandle]) -> None:
        requests = [EngineRequest(h, h.prompt_ids, h.params, h.arrival) for h in handles]
        self._inbox.put(("submit_choices", requests))

    async def memory(self) -> dict[str, Any]:
        return engine_memory(self._engine, self.info)

    async def graphs(self) -> str | None:
        return self._engine.graph_progress() if self._engine is not None else None

    async def metrics_text(self) -> bytes:
        return generate_latest(self.registry)

    def _run(self) -> None:
        try:
            engine = LLMEngine(self.engine_config, registry=self.registry)
        except Exception:
            log.exception("engine start-up failed")
            self._state = "failed"
            self._ready.set()
            return
        self._engine = engine
        info = engine_info(engine)
        model = ServedModel.of(engine.tokenizer, info)
        loop = EngineLoop(engine, self._inbox, _ThreadOutbox(self.trace), self.engine_metrics, self.trace)
        announce = partial(self._became_ready, info, model)
        if not serve_engine(info, loop, announce, self.engine_config, self.serve_config):
            self._state = "failed"


class _ThreadOutbox:
    """Results straight to the handles' event loop (a request's key is its RequestHandle)."""

    def __init__(self, trace: StepTrace | None) -> None:
        self.trace = trace

    def admitted(self, request: EngineRequest, result: int | Exception) -> None:
        handle: RequestHandle = request.key  # type: ignore[assignment]
        handle.post_admission(result)

    def events(self, batch: list[tuple[EngineRequest, Event]], trace_index: int | None) -> None:
        handles: list[tuple[RequestHandle, Event]] = [(request.key, event) for request, event in batch]  # type: ignore[misc]
        post_step(handles)
        if self.trace is not None and trace_index is not None:
            call_in_loop(handles[0][0].loop, self.trace.delivered, trace_index)
