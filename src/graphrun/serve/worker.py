"""The engine thread: the one thread that owns the LLMEngine, and the paths between it and asyncio.

LLMEngine is not thread-safe and its step() blocks for a whole forward pass, so it cannot run on the
event loop. One thread owns it: it builds it (weights, KV cache, graph capture; /health says 503 until
then), then loops: apply the submissions and aborts the HTTP side queued (a thread-safe queue), run one
step, hand each new token to its request's asyncio.Queue through loop.call_soon_threadsafe (one call
per step). Detokenizing and stop strings run on the event loop (`TextStream`), so the engine thread
does engine work only.

Admission control counts requests in flight (submitted, not yet finished): beyond max_num_seqs +
max_queue a submission raises `QueueFull` (429). Draining refuses new work and waits for the rest.
The request side (handles, errors) is in request.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from graphrun.envvars import gc_freeze_enabled, serve_trace_path
from graphrun.llm.engine import LLMEngine, StepTiming
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams
from graphrun.serve.config import ServeConfig
from graphrun.serve.memory import memory_now
from graphrun.serve.metrics import ServeMetrics
from graphrun.serve.request import (
    Delta,
    EngineFailure,
    Event,
    QueueFull,
    RequestHandle,
    Unavailable,
    call_in_loop,
    post_step,
)
from graphrun.serve.text import TextStream
from graphrun.serve.trace import StepTrace

log = logging.getLogger(__name__)


def freeze_startup_objects() -> None:
    """Move every object alive after start-up out of the collector's reach (gc.freeze()).

    Start-up leaves ~10^6 long-lived objects (torch, the model, FastAPI, pydantic). A full collection
    walks all of them and holds the GIL for tens of milliseconds, which stalls the engine thread and the
    event loop together: the tail of the inter-token latency. Frozen objects are never scanned again;
    garbage made while serving is collected as before.
    """
    gc.collect()
    gc.freeze()
    log.info("froze %d start-up objects (gc.freeze)", gc.get_freeze_count())


class EngineWorker:
    """Owns the engine thread; the HTTP side calls submit / abort / stream / drain."""

    def __init__(
        self,
        engine_config: EngineConfig,
        serve_config: ServeConfig,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.engine_config = engine_config
        self.serve_config = serve_config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ServeMetrics(self.registry)
        self._inbox: queue.SimpleQueue[tuple[str, RequestHandle | None]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="graphrun-engine", daemon=True)
        self._ready = threading.Event()
        self._engine: LLMEngine | None = None
        self._state = "starting"
        self._cond = threading.Condition()
        self._num_in_flight = 0
        self._handles: dict[int, RequestHandle] = {}  # engine thread only: seq id -> request
        # engine thread only: the last step's events, posted once the next batch is launched (_flush)
        self._pending: list[tuple[RequestHandle, Event]] = []
        self._pending_done = 0  # requests among them that finished (released when posted)
        self._pending_timing: StepTiming | None = None
        self.info: dict[str, Any] = {}  # engine.describe() and limits once started (for /health)
        trace_path = serve_trace_path()
        self.trace = StepTrace(trace_path) if trace_path is not None else None

    # ----- lifecycle (any thread) -------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread (builds the engine there); idempotent."""
        if not self._thread.is_alive() and self._state == "starting":
            self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until start-up finished (or failed); True when ready."""
        self._ready.wait(timeout)
        return self._state in ("ready", "draining")

    @property
    def state(self) -> str:
        """The worker's phase: starting, ready, draining, stopping, stopped or failed."""
        return self._state

    @property
    def engine(self) -> LLMEngine:
        """The engine, once started (its read-only parts: tokenizer, max_model_len, describe())."""
        if self._engine is None or self._state not in ("ready", "draining"):
            raise Unavailable(self._state, f"the engine is {self._state}; retry shortly")
        return self._engine

    def memory(self) -> dict[str, Any]:
        """Memory now (any thread: reads counters only), with the KV cache's and graph pool's sizes."""
        engine = self._engine
        device = engine.device if engine is not None else torch.device("cpu")
        sizes = {key: self.info.get(key) for key in ("kv_cache_bytes", "graph_pool_mib")}
        return {**memory_now(device), **sizes}

    @property
    def num_in_flight(self) -> int:
        """Requests submitted and not yet finished."""
        return self._num_in_flight

    def drain(self, timeout: float) -> int:
        """Stop admitting; wait up to `timeout` s for requests in flight; abort the rest (returned: count)."""
        if self._state == "ready":
            self._state = "draining"
        log.info("draining: %d requests in flight, waiting up to %.0f s", self._num_in_flight, timeout)
        with self._cond:
            self._cond.wait_for(lambda: self._num_in_flight == 0, timeout)
            left = self._num_in_flight
        if left:
            log.warning("drain timeout: aborting %d requests", left)
            self._inbox.put(("abort_all", None))
            with self._cond:
                self._cond.wait_for(lambda: self._num_in_flight == 0, 5.0)
        return left

    def stop(self, timeout: float = 10.0) -> None:
        """End the engine thread (requests still in flight fail with 503)."""
        if self._state in ("ready", "draining"):
            self._state = "stopping"
        if self._thread.is_alive():
            self._inbox.put(("stop", None))
            self._thread.join(timeout)
        if self._state != "failed":
            self._state = "stopped"

    # ----- requests (event loop) --------------------------------------------------------------------

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, stop: tuple[str, ...] = ()
    ) -> RequestHandle:
        """Queue a request for the engine; raises Unavailable (503) or QueueFull (429)."""
        if self._state != "ready":
            raise Unavailable(self._state, f"the server is {self._state}; retry shortly")
        limit = self.engine_config.max_num_seqs + self.serve_config.max_queue
        with self._cond:
            if self._num_in_flight >= limit:
                raise QueueFull(f"{self._num_in_flight} requests in flight (limit {limit}); retry shortly")
            self._num_in_flight += 1
        handle = RequestHandle(prompt_ids, params, stop, asyncio.get_running_loop())
        self._inbox.put(("submit", handle))
        return handle

    def abort(self, handle: RequestHandle) -> None:
        """Stop a request and free its KV blocks (any thread; a finished request is left alone)."""
        self._inbox.put(("abort", handle))

    async def stream(self, handle: RequestHandle, every_batch: bool = False) -> AsyncIterator[Delta]:
        """Deltas of an admitted request until it ends; aborts it if the reader stops early.

        A delta comes when there is text to send or the request ended (its token ids: every id since
        the last delta); with every_batch, one comes for every batch of tokens, even with no text.
        """
        text = TextStream(self.engine.tokenizer, handle.stop)
        pending: list[int] = []
        try:
            while handle.finish_reason is None:
                token_ids, reason = await handle.next_tokens()
                pending += token_ids
                delta, hit_stop = text.push(token_ids, final=reason is not None)
                if hit_stop:
                    if reason is None:
                        self.abort(handle)  # frees its blocks now; tokens after the stop are dropped
                    reason = "stop"
                handle.finish_reason = reason
                if delta or reason is not None or (every_batch and token_ids):
                    yield Delta(delta, reason, tuple(pending))
                    pending = []
        finally:
            if handle.finish_reason is None:
                self.abort(handle)

    # ----- the engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._engine = LLMEngine(self.engine_config, registry=self.registry)
        except Exception:
            log.exception("engine start-up failed")
            self._state = "failed"
            self._ready.set()
            return
        engine = self._engine
        self.info = {
            **engine.describe(),
            "max_model_len": engine.max_model_len,
            "vocab_size": engine.model_config.vocab_size,
            "kv_cache_bytes": engine.num_blocks * engine.kv_spec.bytes_per_block,
        }
        if gc_freeze_enabled():
            freeze_startup_objects()
        if self.trace is not None:
            self.trace.watch_gc()  # collections while serving (start-up's are not the question)
        self._state = "ready"
        self._ready.set()
        self._log_serving(self._engine)
        try:
            self._loop(self._engine)
        except Exception:
            log.exception("the engine thread crashed; failing every request in flight")
            self._state = "failed"

        def gone() -> Exception:
            return Unavailable("stopped", "the server is shutting down")

        self._flush()
        self._fail_all(gone)
        for command, handle in self._commands(block=False):  # submitted after the last loop: refuse
            if command == "submit" and handle is not None:
                self._release()
                handle.post_admission(gone())
        if self.trace is not None:
            self.trace.write()

    def _loop(self, engine: LLMEngine) -> None:
        while True:
            for command, handle in self._commands(block=not engine.has_unfinished()):
                if command == "stop":
                    return
                if command == "submit" and handle is not None:
                    self._add(engine, handle)
                elif command == "abort" and handle is not None:
                    self._abort(engine, handle)
                elif command == "abort_all":
                    for seq_handle in list(self._handles.values()):
                        self._abort(engine, seq_handle)
            if engine.has_unfinished():
                self._step(engine)
            if not engine.has_unfinished():
                self._flush()  # no next launch to wait for
            self.metrics.publish(engine.scheduler, self._inbox.qsize())

    def _commands(self, block: bool) -> list[tuple[str, RequestHandle | None]]:
        """Everything queued now; with block, wait for at least one command first."""
        commands = [self._inbox.get()] if block else []
        while True:
            try:
                commands.append(self._inbox.get_nowait())
            except queue.Empty:
                return commands

    def _add(self, engine: LLMEngine, handle: RequestHandle) -> None:
        try:
            seq_id = engine.add_request(handle.prompt_ids, handle.params)
        except Exception as exc:  # RequestRejected / SamplingParamsError: 400; anything else: 500 for it only
            self._release()
            handle.post_admission(exc)
            return
        handle.seq_id = seq_id
        self._handles[seq_id] = handle
        self.metrics.prompt_tokens.inc(len(handle.prompt_ids))
        handle.post_admission(seq_id)

    def _abort(self, engine: LLMEngine, handle: RequestHandle) -> None:
        if handle.seq_id is None or self._handles.pop(handle.seq_id, None) is None:
            return  # rejected, finished or aborted already
        engine.abort(handle.seq_id)
        self._release()
        post_step([(handle, (None, "abort"))])

    def _step(self, engine: LLMEngine) -> None:
        """One engine step; its tokens are held and posted during the next step, right after its launch.

        Posting wakes the event loop, which then writes a chunk per stream holding the GIL. Posted while
        the engine thread launches the next batch, that work slowed the launch (the host part of every
        step); posted after it, it overlaps the wait for the device. A token is delivered one launch
        later (~0.5 ms); the gaps between a stream's tokens are unchanged.
        """
        try:
            outputs = engine.step(on_launched=self._flush)
        except Exception:
            self._flush()
            log.exception("engine step failed; failing the %d requests in flight", len(self._handles))
            for seq_id in list(self._handles):
                engine.abort(seq_id)
            self._fail_all(lambda: EngineFailure("the engine step running this request failed (see the log)"))
            return
        now = time.monotonic()
        for out in outputs:
            handle = self._handles.get(out.seq_id)
            if handle is None:
                continue  # aborted while the step ran
            last = handle.last_token_time
            self.metrics.observe_token(last is None, now - (handle.arrival if last is None else last))
            handle.last_token_time = now
            self._pending.append(
                (handle, (out.new_token_id, (out.finish_reason or "stop") if out.finished else None))
            )
            if out.finished:
                del self._handles[out.seq_id]
                self._pending_done += 1
        self.metrics.generation_tokens.inc(len(self._pending))
        self._pending_timing = engine.last_step_timing

    def _flush(self) -> None:
        """Post the held events to their requests; release the requests that finished."""
        batch, done, timing = self._pending, self._pending_done, self._pending_timing
        if not batch and not done:
            return
        self._pending, self._pending_done, self._pending_timing = [], 0, None
        post_step(batch)
        for _ in range(done):
            self._release()
        if self.trace is not None and timing is not None:
            self._trace_step(timing, batch)

    def _trace_step(self, timing: StepTiming, batch: list[tuple[RequestHandle, Event]]) -> None:
        """Record the step; the delivery time is taken on the event loop, after post_step's callback."""
        assert self.trace is not None
        seq_ids = [handle.seq_id for handle, _ in batch if handle.seq_id is not None]
        index = self.trace.record(timing, time.perf_counter(), seq_ids)
        if index is not None and batch:
            call_in_loop(batch[0][0].loop, self.trace.delivered, index)

    def _fail_all(self, make_error: Callable[[], Exception]) -> None:
        """End every tracked request with an error of its own (blocks are freed by the caller or the exit)."""
        handles = list(self._handles.values())
        self._handles.clear()
        for _ in handles:
            self._release()
        post_step([(handle, make_error()) for handle in handles])

    def _release(self) -> None:
        with self._cond:
            self._num_in_flight -= 1
            self._cond.notify_all()

    def _log_serving(self, engine: LLMEngine) -> None:
        info = engine.describe()
        graphs = f"on, sizes {info['capture_sizes']}" if info["decode_graphs"] else "off"
        log.info(
            "serving %s on %s (graphs: %s; max_num_seqs %d, max_model_len %d, %d KV blocks, %s %s)",
            self.serve_config.served_model_name,
            self.serve_config.url,
            graphs,
            self.engine_config.max_num_seqs,
            engine.max_model_len,
            info["num_kv_blocks"],
            info["device"],
            info["dtype"],
        )
