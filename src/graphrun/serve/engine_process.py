"""The engine in a process of its own: both ends of the pipe between it and the HTTP server.

Why a process: with the engine on a thread, the event loop (a chunk per stream per step, HTTP parsing)
and the engine loop take turns on one GIL, and every turn the event loop takes delays a launch. The
engine process runs the engine loop (engine_loop.py) on its main thread with the GIL to itself; the
server process keeps HTTP, tokenization and detokenization.

The pipe (multiprocessing, spawn: CUDA is initialized in the engine process only) carries pickled tuples:
- server -> engine: ("submit", (request id, prompt ids, params, arrival)), ("submit_choices", (request
  ids, prompt ids, params, arrival)) for the n choices of one prompt, ("abort", request id),
  ("abort_all", None), ("stop", None), ("call", call id, "metrics" | "memory" | "graphs"),
  ("delivered", trace index, perf_counter) when tracing;
- engine -> server: ("ready", info, tokenizer) or ("failed", message), then ("admitted", request id,
  seq id | error), ("events", [(request id, event)...], trace index) once a step, ("reply", call id, value).
A receiver thread in the engine process turns commands into the engine loop's queue and answers calls
itself (registry text, memory counters: safe from any thread), so /metrics and /health never wait for
a step, even during graph capture. The server reads the pipe on its event loop (loop.add_reader).

Failure: if the engine process dies, the server sees end-of-file on the pipe, fails every request in
flight (500), reports `failed` on /health and shuts down (exit status 1) for its supervisor to restart.
If the server dies, the engine process sees end-of-file and stops. The engine process ignores SIGINT
and SIGTERM: the server drains first, then stops it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from graphrun.envvars import engine_cpus, serve_trace_path
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.serve.config import ServeConfig
from graphrun.serve.engine_loop import Command, EngineLoop
from graphrun.serve.memory import max_rss_bytes
from graphrun.serve.metrics import EngineMetrics
from graphrun.serve.request import (
    EngineFailure,
    EngineRequest,
    Event,
    RequestHandle,
    Unavailable,
    call_in_loop,
)
from graphrun.serve.trace import StepTrace
from graphrun.serve.worker import (
    EngineWorker,
    ServedModel,
    engine_info,
    engine_memory,
    serve_engine,
    settle_collector,
)

log = logging.getLogger(__name__)

ENGINE_LOG_FORMAT = "%(asctime)s %(levelname)s [engine] %(name)s: %(message)s"
CALL_TIMEOUT_SECONDS = 5.0  # a /metrics or /health read of the engine process gives up after this


# ----- the engine process ---------------------------------------------------------------------------


def run_engine_process(
    conn: Connection, engine_config: EngineConfig, serve_config: ServeConfig, log_level: int
) -> None:
    """The engine process's entry point (spawned): exit status 0 after a stop, 1 on a failure."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server drains first
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=ENGINE_LOG_FORMAT)
    cpus = engine_cpus()
    if cpus:
        os.sched_setaffinity(0, cpus)  # type: ignore[attr-defined,unused-ignore]  # Linux only
        log.info("engine process pinned to CPUs %s", sorted(cpus))
    code = _EngineProcess(conn, engine_config, serve_config).run()
    # Nothing is left to clean up once the loop has ended (the trace is written, the pipe's other end
    # notices the exit). Skipping interpreter finalization saves a second and the hundreds of lines of
    # "nanobind: leaked ..." that Triton's bindings print there.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _EngineProcess:
    """The engine loop on the main thread, the pipe's receiver on another."""

    def __init__(self, conn: Connection, engine_config: EngineConfig, serve_config: ServeConfig) -> None:
        self.conn, self.engine_config, self.serve_config = conn, engine_config, serve_config
        self.registry = CollectorRegistry()
        self.metrics = EngineMetrics(self.registry)
        self.inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.engine: LLMEngine | None = None
        self.info: dict[str, Any] = {}
        trace_path = serve_trace_path()
        self.trace = StepTrace(trace_path) if trace_path is not None else None
        self._send_lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        """Send to the server (any thread); a server that is gone is noticed by the receiver."""
        with self._send_lock:
            try:
                self.conn.send(message)
            except OSError as exc:
                log.debug("the server process is gone (%s)", exc)

    def run(self) -> int:
        threading.Thread(target=self._receive, name="graphrun-engine-pipe", daemon=True).start()
        try:
            engine = LLMEngine(self.engine_config, registry=self.registry)
        except Exception as exc:
            log.exception("engine start-up failed")
            self.send(("failed", f"{type(exc).__name__}: {exc}"))
            return 1
        self.engine = engine
        self.info = {**engine_info(engine), "engine_pid": os.getpid()}
        loop = EngineLoop(engine, self.inbox, _PipeOutbox(self.send), self.metrics, self.trace, hold=False)
        announce = partial(self.send, ("ready", self.info, engine.tokenizer))
        clean = serve_engine(self.info, loop, announce, self.engine_config, self.serve_config)
        return 0 if clean else 1

    def _receive(self) -> None:
        """Commands to the engine loop's queue; calls answered here; end-of-file stops the loop."""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self.inbox.put(("stop", None))
                return
            kind = message[0]
            if kind == "submit":
                request_id, prompt_ids, params, arrival = message[1]
                self.inbox.put(("submit", EngineRequest(request_id, prompt_ids, params, arrival)))
            elif kind == "submit_choices":
                request_ids, prompt_ids, params, arrival = message[1]
                group = [EngineRequest(i, prompt_ids, params, arrival) for i in request_ids]
                self.inbox.put(("submit_choices", group))
            elif kind == "call":
                self.send(("reply", message[1], self._answer(message[2])))
            elif kind == "delivered":
                if self.trace is not None:
                    self.trace.delivered(message[1], message[2])
            else:
                self.inbox.put((kind, message[1]))

    def _answer(self, name: str) -> Any:
        if name == "metrics":
            return generate_latest(self.registry)
        if name == "memory":
            return engine_memory(self.engine, self.info)
        if name == "graphs":  # graph_progress reads plain lists: safe beside the engine loop
            return self.engine.graph_progress() if self.engine is not None else None
        raise ValueError(f"unknown call {name!r}")


class _PipeOutbox:
    """Results down the pipe, addressed by request id."""

    def __init__(self, send: Any) -> None:
        self.send = send

    def admitted(self, request: EngineRequest, result: int | Exception) -> None:
        self.send(("admitted", request.key, _portable(result)))

    def events(self, batch: list[tuple[EngineRequest, Event]], trace_index: int | None) -> None:
        self.send(("events", [(request.key, _portable(event)) for request, event in batch], trace_index))


def _portable(value: Any) -> Any:
    """`value`, or for an exception that does not survive pickling, one of its kind that does."""
    if not isinstance(value, Exception):
        return value
    try:
        pickle.loads(pickle.dumps(value))
        return value
    except Exception:
        kind = ValueError if isinstance(value, ValueError) else EngineFailure  # 400 or 500, as before
        return kind(f"{type(value).__name__}: {value}")


# ----- the server process ---------------------------------------------------------------------------


class ProcessWorker(EngineWorker):
    """The engine loop in a spawned process; this side reads the pipe on the event loop.

    start() must run on the event loop (the app's lifespan does): the pipe is read there.
    """

    def __init__(self, engine_config: EngineConfig, serve_config: ServeConfig) -> None:
        super().__init__(engine_config, serve_config)
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handles: dict[int, RequestHandle] = {}  # event loop only: submitted, not over
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._call_ids = itertools.count()
        self._send_lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The engine process's pid, once started."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        if self._process is not None or self._state != "starting":
            return
        self._loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        level = logging.getLogger().getEffectiveLevel()
        self._process = context.Process(
            target=run_engine_process,
            args=(theirs, self.engine_config, self.serve_config, level),
            name="graphrun-engine",
            daemon=True,
        )
        self._process.start()
        theirs.close()  # else this process holds the engine's end open and never sees it die
        self._conn = ours
        self._loop.add_reader(ours.fileno(), self._on_readable)
        # uvloop (libuv) makes a polled fd non-blocking; a message over 16 KiB (a /metrics reply) comes in two
        # writes, and recv() between them would raise BlockingIOError, read here as the engine gone. Blocking,
        # recv() waits for the rest of a message already being written; readiness still wakes the loop
        os.set_blocking(ours.fileno(), True)
        log.info("engine process started (pid %d)", self._process.pid)

    def stop(self, timeout: float = 10.0) -> None:
        if self._state in ("ready", "draining"):
            self._state = "stopping"
        process = self._process
        if process is not None and process.is_alive():
            self._post(("stop", None))
            process.join(timeout)
            if process.is_alive():
                log.warning("the engine process did not stop within %.0f s; killing it", timeout)
                process.kill()
                process.join(5)
        if self._loop is not None:
            call_in_loop(self._loop, self._engine_gone)
        if self._state != "failed":
            self._state = "stopped"
        self._stopped()

    def _send(self, command: str, handle: RequestHandle | None) -> None:
        if command == "submit" and handle is not None:
            self._handles[handle.request_id] = handle
            payload: Any = (handle.request_id, handle.prompt_ids, handle.params, handle.arrival)
        else:
            payload = handle.request_id if handle is not None else None
        self._post((command, payload))

    def _send_choices(self, handles: list[RequestHandle]) -> None:
        for handle in handles:
            self._handles[handle.request_id] = handle
        first = handles[0]
        request_ids = [h.request_id for h in handles]
        self._post(("submit_choices", (request_ids, first.prompt_ids, first.params, first.arrival)))

    def _post(self, message: tuple[Any, ...]) -> None:
        """Send to the engine process (any thread); one that is gone is noticed by the reader."""
        with self._send_lock:
            if self._conn is None:
                return
            try:
                self._conn.send(message)
            except OSError as exc:
                log.debug("the engine process is gone (%s)", exc)

    async def memory(self) -> dict[str, Any]:
        engine = await self._call("memory")
        return {**(engine or {}), "server_max_rss_bytes": max_rss_bytes()}

    async def graphs(self) -> str | None:
        return await self._call("graphs")

    async def metrics_text(self) -> bytes:
        engine = await self._call("metrics")
        return generate_latest(self.registry) + (engine or b"")

    async def _call(self, name: str) -> Any:
        """Ask the engine process's receiver; None when it is gone or does not answer in time."""
        if self._conn is None or self._loop is None:
            return None
        call_id = next(self._call_ids)
        future = self._calls[call_id] = self._loop.create_future()
        self._post(("call", call_id, name))
        try:
            return await asyncio.wait_for(future, CALL_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("the engine process did not answer %r within %.0f s", name, CALL_TIMEOUT_SECONDS)
            return None
        finally:
            self._calls.pop(call_id, None)

    def _on_done(self, handle: RequestHandle) -> None:
        self._handles.pop(handle.request_id, None)
        super()._on_done(handle)

    # ----- the pipe's reader (event loop) -----------------------------------------------------------

    def _on_readable(self) -> None:
        """One message per call: the event loop calls again while more is readable. (Looping on
        conn.poll() cost a new selector and a poll syscall twice a step; dropping it cut the server's
        CPU per streamed token by ~6% on the CPU box, side by side.)"""
        conn = self._conn
        if conn is None:
            return
        try:
            message = conn.recv()  # readable: the engine writes each message whole, so this returns soon
        except (EOFError, OSError):
            self._engine_gone()
            return
        self._dispatch(message)

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "events":
            _, batch, trace_index = message
            handles = self._handles
            for request_id, event in batch:
                handle = handles.get(request_id)
                if handle is not None:
                    handle.put(event)
            if trace_index is not None:
                self._post(("delivered", trace_index, time.perf_counter()))
        elif kind == "admitted":
            handle = self._handles.get(message[1])
            if handle is not None:
                handle.admit(message[2])
        elif kind == "reply":
            future = self._calls.get(message[1])
            if future is not None and not future.done():
                future.set_result(message[2])
        elif kind == "ready":
            _, info, tokenizer = message
            settle_collector()
            self._became_ready(info, ServedModel.of(tokenizer, info))
        elif kind == "failed":
            log.error("engine start-up failed: %s", message[1])
            self._state = "failed"
            self._ready.set()

    def _engine_gone(self) -> None:
        """(event loop) The pipe closed: fail what is in flight; unless we were stopping, we failed."""
        with self._send_lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(conn.fileno())
        conn.close()
        if self._state in ("stopping", "stopped"):
            error: Exception = Unavailable("stopped", "the server is shutting down")
        else:
            process = self._process
            if process is not None:
                process.join(1.0)
            code = process.exitcode if process is not None else None
            log.error(
                "the engine process exited (exit status %s); failing %d requests in flight",
                code,
                len(self._handles),
            )
            self._state = "failed"
            error = EngineFailure(f"the engine process exited (exit status {code})")
        for handle in list(self._handles.values()):
            handle.fail(error)
        for future in self._calls.values():
            if not future.done():
                future.set_result(None)
        self._ready.set()
