"""The HTTP side's one handle on the engine host, whatever the served model and the transport.

Admission control counts requests in flight (submitted, not yet over): beyond `max_in_flight` a
submission raises QueueFull (429). Draining refuses new work and waits for the rest. The transport
calls `_receive` on the engine's thread (thread transport) or on the event loop (pipe); each message's
work runs on the event loop of its request, posted there from another thread (one post per loop a step).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Generic, Protocol

from prometheus_client import CollectorRegistry, generate_latest

from graphrun.serve.host import messages as m
from graphrun.serve.host.handle import RequestHandle
from graphrun.serve.host.messages import E, Info
from graphrun.serve.host.transport import Transport
from graphrun.serve.memory import max_rss_bytes
from graphrun.serve.metrics import RequestMetrics

log = logging.getLogger(__name__)
ASK_TIMEOUT_SECONDS = 5.0  # a /metrics or /health question to the engine side gives up after this


class ClientObserver(Protocol):
    """What tracing sees of the HTTP side (serve/trace.py's SendTrace); off (None) by default."""

    def serving(self) -> None:
        """The engine is ready."""

    def sent(self, request_id: int) -> None:
        """A chunk of the request was written to its client."""

    def close(self) -> None:
        """The engine is gone: write the record."""


class EngineClient(Generic[Info, E]):
    """start / submit / abort / drain / stop, and the engine side's metrics, memory, progress. A served
    model's client (llm_client.py, infer/client.py) adds the requests of its kind, built on `submit`."""

    def __init__(
        self, transport: Transport[Info, E], max_in_flight: int, observer: ClientObserver | None = None
    ) -> None:
        self.transport, self.max_in_flight, self.observer = transport, max_in_flight, observer
        self.registry = CollectorRegistry()  # this side's series (/metrics joins the engine side's)
        self.metrics = RequestMetrics(self.registry)
        self.state = "starting"  # ready, draining, stopping, stopped or failed
        self._model: Info | None = None
        self._running = False  # the engine side is started and not gone
        self._ready, self._cond = threading.Event(), threading.Condition()  # _cond: a request ended
        self._ids = itertools.count()
        self._handles: dict[int, RequestHandle[E]] = {}  # submitted, not over
        self._calls: dict[int, asyncio.Future[Any]] = {}

    def start(self) -> None:
        """Start the engine side (in the background: /health says 503 until it is ready); idempotent."""
        if not self._running and self.state == "starting":
            self._running = True
            self.transport.start(self._receive, self._gone)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """An ASGI app's lifespan (FastAPI(lifespan=client.lifespan)): the engine side starts with the app
        and stops with it (off the event loop: stopping joins threads or a process)."""
        self.start()
        try:
            yield
        finally:
            await asyncio.to_thread(self.stop)

    def stop(self, timeout: float = 10.0) -> None:
        """End the engine side (requests still in flight fail with 503); any thread."""
        if self.state in ("ready", "draining"):
            self.state = "stopping"
        self.transport.stop(timeout)
        if self.state != "failed":
            self.state = "stopped"
        if self.observer is not None:
            self.observer.close()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until start-up finished (or failed); True when ready. Not on the event loop."""
        self._ready.wait(timeout)
        return self.state in ("ready", "draining")

    @property
    def model(self) -> Info:
        """The served model's info (an LLM's tokenizer and limits, a tensor model's schema), once ready."""
        if self._model is None or self.state not in ("ready", "draining"):
            raise m.Unavailable(self.state, f"the engine is {self.state}; retry shortly")
        return self._model

    @property
    def num_in_flight(self) -> int:
        """Requests submitted and not over yet (any thread)."""
        return len(self._handles)

    @property
    def info(self) -> dict[str, Any]:
        """The engine's start-up facts for /health ({} before it is ready)."""
        return self._model.facts if self._model is not None else {}

    def drain(self, timeout: float) -> int:
        """Stop admitting; wait up to `timeout` s for requests in flight; the rest (returned: count) end
        with a 503 error (a last SSE error event, or a 503 answer), never with a finish reason."""
        if self.state == "ready":
            self.state = "draining"
        log.info("draining: %d requests in flight, waiting up to %.0f s", self.num_in_flight, timeout)
        with self._cond:
            self._cond.wait_for(lambda: self.num_in_flight == 0, timeout)
            left = self.num_in_flight
        if left:
            log.warning("drain deadline: ending %d requests with a 503 error", left)
            self.transport.send(m.AbortAll())
            with self._cond:
                self._cond.wait_for(lambda: self.num_in_flight == 0, 5.0)
        return left

    def submit(self, handles: Sequence[RequestHandle[E]], message: m.Submission) -> None:
        """(event loop) Send a request message and count its handles (one per id it names) in flight;
        raises Unavailable (503) or QueueFull (429)."""
        if self.state != "ready":
            raise m.Unavailable(self.state, f"the server is {self.state}; retry shortly")
        with self._cond:  # requests may come from several event loops
            if (num := self.num_in_flight) + (n := len(handles)) > self.max_in_flight:
                limit = self.max_in_flight
                raise m.QueueFull(f"{num} requests in flight, {n} more asked (limit {limit}); retry shortly")
            self._handles.update((handle.request_id, handle) for handle in handles)
        self.transport.send(message)

    def abort(self, handle: RequestHandle[E]) -> None:
        """Stop a request and free what it holds (a request that is over is left alone)."""
        if not handle.done:
            self.transport.send(m.Abort(handle.request_id))

    def _on_done(self, handle: RequestHandle[E]) -> None:
        with self._cond:
            del self._handles[handle.request_id]
            self._cond.notify_all()

    async def memory(self) -> dict[str, Any]:
        """(event loop) Memory now where the engine runs, and this process's peak RSS."""
        return {**await self._ask(m.Question.MEMORY, dict, {}), "server_max_rss_bytes": max_rss_bytes()}

    async def graphs(self) -> str | None:
        """The engine's graph progress ("capturing 3/36", "captured 36/36", "off"); None: no engine."""
        return await self._ask(m.Question.PROGRESS, str, None)

    async def metrics_text(self) -> bytes:
        """The Prometheus text of every series: this side's and the engine side's."""
        return generate_latest(self.registry) + await self._ask(m.Question.METRICS, bytes, b"")

    async def _ask(self, question: m.Question, kind: type, default: Any) -> Any:
        """The engine side's answer if it is a `kind`, else `default` (not running, or no answer in time)."""
        if not self._running:
            return default
        call_id = next(self._ids)
        future = self._calls[call_id] = asyncio.get_running_loop().create_future()
        self.transport.send(m.Ask(question, call_id))
        try:
            answer = await asyncio.wait_for(future, ASK_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("the engine did not answer %s within %.0f s", question.value, ASK_TIMEOUT_SECONDS)
            answer = None
        finally:
            self._calls.pop(call_id, None)
        return answer if isinstance(answer, kind) else default

    def _receive(self, message: m.ToClient[Info, E]) -> None:
        """(from the transport: the engine's thread, or the event loop) One message of the host loop's."""
        if isinstance(message, m.Events):
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle[E], E | m.Ended]]] = {}
            for request_id, event in message.batch:
                if (handle := self._handles.get(request_id)) is not None:
                    by_loop.setdefault(handle.admitted.get_loop(), []).append((handle, event))
            trace_index = message.trace_index  # noted by the first delivery
            for loop, pairs in by_loop.items():
                _on_loop(loop, self._deliver, pairs, trace_index)
                trace_index = None
        elif isinstance(message, m.Admitted):
            if (handle := self._handles.get(message.request_id)) is not None:
                _on_loop(handle.admitted.get_loop(), handle.admit, message.result)
        elif isinstance(message, m.Answer):
            if (future := self._calls.get(message.call_id)) is not None:
                _on_loop(future.get_loop(), _resolve, future, message.value)
        elif isinstance(message, m.Ready):
            if self.observer is not None:
                self.observer.serving()
            self._model, self.state = message.info, "ready" if self.state == "starting" else self.state
            self._ready.set()
        else:
            log.error("engine start-up failed: %s", message.reason)
            self.state = "failed"
            self._ready.set()

    def _deliver(self, pairs: list[tuple[RequestHandle[E], E | m.Ended]], trace_index: int | None) -> None:
        for handle, event in pairs:
            handle.put(event)
        if trace_index is not None:
            self.transport.send(m.Delivered(trace_index, time.perf_counter()))

    def _gone(self, why: str) -> None:
        """(any thread) The engine side ended: fail what is in flight; unless we were stopping, we failed."""
        self._running = False
        if self.state in ("stopping", "stopped"):
            error: Exception = m.Unavailable("stopped", "the server is shutting down")
        else:
            log.error("the engine %s; failing %d requests in flight", why, len(self._handles))
            self.state, error = "failed", m.EngineFailure(f"the engine {why}")
        for handle in list(self._handles.values()):
            _on_loop(handle.admitted.get_loop(), handle.fail, error)
        for future in list(self._calls.values()):
            _on_loop(future.get_loop(), _resolve, future, None)
        self._ready.set()


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: Any) -> None:
    """fn(*args) now when this thread runs `loop`, else posted to it (a loop that has closed is ignored)."""
    try:
        here = asyncio.get_running_loop() is loop
    except RuntimeError:
        here = False
    if here:
        fn(*args)
    else:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)


def _resolve(future: asyncio.Future[Any], value: object) -> None:
    if not future.done():
        future.set_result(value)
