"""How messages travel between the client and the host loop: in a thread, or through a process's pipe.

A transport starts the engine side, carries the client's messages to its host loop (`send`, any
thread), hands the host's messages to the client (`receive`) and says once, with why, that the engine
side has ended (`gone`).

ThreadTransport runs the host loop on a thread of this process (easy to debug, but it shares the event
loop's GIL); `receive` runs on that thread. PipeTransport runs it in a spawned process that keeps a GIL
to itself, as vLLM's engine core does: there the host loop runs on the main thread, fed by a thread
reading the pipe (whose end of file stops it); here the pipe is read on the event loop, one message per
wake-up (looping on conn.poll() cost a new selector and a poll syscall twice a step: ~6% of the
server's CPU per streamed token).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Generic, Protocol

from graphrun.serve.host import messages as m
from graphrun.serve.host.host_loop import HostLoop, HostPlan, freeze_startup_objects
from graphrun.serve.host.messages import E, Info

log = logging.getLogger(__name__)
ENGINE_LOG_FORMAT = "%(asctime)s %(levelname)s [engine] %(name)s: %(message)s"
Receive = Callable[[m.ToClient[Info, E]], None]
Gone = Callable[[str], None]


class Transport(Protocol[Info, E]):
    def start(self, receive: Receive[Info, E], gone: Gone) -> None:
        """Start the engine side (returns at once)."""

    def send(self, message: m.ToHost) -> None:
        """Carry a message to the host loop (any thread); dropped once the engine side is gone."""

    def stop(self, timeout: float) -> None:
        """Ask the host loop to stop; wait up to `timeout` s for the engine side to end (any thread)."""


class ThreadTransport(Generic[Info, E]):
    """The host loop on a thread of this process."""

    def __init__(self, plan: HostPlan[Info, E]) -> None:
        self._plan = plan
        self._host: HostLoop[Info, E] | None = None
        self._thread: threading.Thread | None = None
        self.pid = os.getpid()  # where the host loop runs

    def start(self, receive: Receive[Info, E], gone: Gone) -> None:
        host = self._host = HostLoop(self._plan, receive, hold=True)

        def run() -> None:
            gone("thread ended" if host.run() else "thread failed")

        self._thread = threading.Thread(target=run, name="graphrun-engine", daemon=True)
        self._thread.start()

    def send(self, message: m.ToHost) -> None:
        if self._host is not None:
            self._host.accept(message)

    def stop(self, timeout: float) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.send(m.Stop())
            self._thread.join(timeout)


class PipeTransport(Generic[Info, E]):
    """The host loop in a spawned process. start() must run on the event loop (the app's lifespan does)."""

    def __init__(self, plan: HostPlan[Info, E]) -> None:
        self._plan = plan
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gone: Gone | None = None
        self._lock = threading.Lock()  # one writer at a time; guards _conn
        self.pid: int | None = None  # the engine process's, once started

    def start(self, receive: Receive[Info, E], gone: Gone) -> None:
        self._loop, self._gone = asyncio.get_running_loop(), gone
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        args = (theirs, self._plan, logging.getLogger().getEffectiveLevel())
        self._process = context.Process(
            target=run_engine_process, args=args, name="graphrun-engine", daemon=True
        )
        self._process.start()
        self.pid = self._process.pid
        theirs.close()  # else this process holds the engine's end open and never sees it die
        self._conn = ours
        self._loop.add_reader(ours.fileno(), self._on_readable, ours, receive)
        # uvloop makes a polled fd non-blocking; a message over 16 KiB (a /metrics answer) comes in two
        # writes, and recv() between them would raise BlockingIOError, read as the engine gone. Blocking,
        # recv() waits for the rest of a message already being written; readiness still wakes the loop
        os.set_blocking(ours.fileno(), True)
        log.info("engine process started (pid %d)", self.pid)

    def send(self, message: m.ToHost) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.send(message)
            except OSError as exc:  # the reader notices the engine is gone
                log.debug("the engine process is gone (%s)", exc)

    def stop(self, timeout: float) -> None:
        process = self._process
        if process is not None and process.is_alive():
            self.send(m.Stop())
            process.join(timeout)
            if process.is_alive():
                log.warning("the engine process did not stop within %.0f s; killing it", timeout)
                process.kill()
                process.join(5)
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self._loop.call_soon_threadsafe(self._closed)

    def _on_readable(self, conn: Connection, receive: Receive[Info, E]) -> None:
        try:
            message = conn.recv()  # the engine writes each message whole, so this returns soon
        except (EOFError, OSError):
            self._closed()
            return
        if isinstance(message, m.Ready):
            freeze_startup_objects()  # in this process (the engine process froze its own)
        receive(message)

    def _closed(self) -> None:
        """(event loop) The pipe closed, or we stopped: the engine side has ended."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        assert self._loop is not None and self._gone is not None and self._process is not None
        self._loop.remove_reader(conn.fileno())
        conn.close()
        self._process.join(1.0)
        self._gone(f"process exited (exit status {self._process.exitcode})")


def run_engine_process(conn: Connection, plan: HostPlan[Any, Any], log_level: int) -> None:
    """The engine process's entry point (spawned): exit status 0 after a stop, 1 on a failure."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server drains first
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=ENGINE_LOG_FORMAT)
    lock = threading.Lock()

    def send(message: m.ToClient[Any, Any]) -> None:
        with lock:
            try:
                conn.send(_portable(message))
            except OSError as exc:  # the receiver notices the server is gone
                log.debug("the server process is gone (%s)", exc)

    host = HostLoop(plan, send, hold=False)

    def receive() -> None:
        with contextlib.suppress(EOFError, OSError):  # the server closed its end, or is gone
            while True:
                host.accept(conn.recv())
        host.accept(m.Stop())

    threading.Thread(target=receive, name="graphrun-engine-pipe", daemon=True).start()
    code = 0 if host.run() else 1
    # Nothing is left to clean up (the trace is written, the server notices the exit). Skipping
    # interpreter finalization saves a second and the "nanobind: leaked ..." lines Triton prints there.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _portable(message: m.ToClient[Info, E]) -> m.ToClient[Info, E]:
    """`message` with every exception in it replaced, if it does not survive pickling, by one that does."""
    if isinstance(message, m.Admitted) and isinstance(message.result, Exception):
        return m.Admitted(message.request_id, portable_error(message.result))
    if isinstance(message, m.Events) and any(isinstance(event, Exception) for _, event in message.batch):
        batch = tuple((rid, portable_error(e) if isinstance(e, Exception) else e) for rid, e in message.batch)
        return m.Events(batch, message.trace_index)
    return message


def portable_error(error: Exception) -> Exception:
    """`error`, or one of its kind that survives pickling (ValueError: a 400, else EngineFailure: a 500)."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        kind = ValueError if isinstance(error, ValueError) else m.EngineFailure
        return kind(f"{type(error).__name__}: {error}")
