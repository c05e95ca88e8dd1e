"""The engine host: the one loop that runs a served model while serving, in a thread or a process.

A served model is not thread-safe and its step() blocks for a whole forward pass, so it never runs on
the event loop. `accept` (any thread) answers questions at once and queues commands; the loop applies
them, steps while there is work and sends what happens (admissions; each step's events). AbortAll ends
each request with a 503 error, never a finish reason: the client sees that its answer was cut.

When a step's events are sent depends on where the client runs (`hold`). A thread of this process
(hold=True): right after the next batch is launched (step's on_launched), since waking the event loop
while the batch is scheduled would delay that launch through the shared GIL. Another process: at once,
since holding them would add the next launch's host time, and every hiccup in it, to each stream's gap.
While idle with background work left (graph capture), the loop polls instead of blocking and does a
slice of it per turn, so a request arriving waits for one slice at most.

A step that raises fails the requests in flight and the loop goes on, except an EngineDeadError (a
tensor-parallel rank died or diverged): that model cannot step again, so the loop ends as if it had
crashed, and the server shuts down with the error. Either way the loop closes the model last (which
stops its worker processes).
"""

from __future__ import annotations

import gc
import logging
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Generic, Protocol

from graphrun.errors import EngineDeadError
from graphrun.serve.host import messages as m
from graphrun.serve.host.messages import E, Info
from graphrun.serve.host.served_model import ServedModel
from graphrun.step_timing import StepTiming

log = logging.getLogger(__name__)
CUT = "the server is shutting down and its drain deadline passed before this request finished; retry it"
STEP_FAILED = "the engine step running this request failed (see the log)"
STOPPED = partial(m.Unavailable, "stopped", "the server is shutting down")  # each request gets its own


class HostObserver(Protocol):
    """What tracing sees of the host loop (serve/trace.py's StepTrace); off (None) by default."""

    def serving(self) -> None:
        """Start-up is over."""

    def step(self, timing: StepTiming, posted: float, request_ids: Sequence[int]) -> int | None:
        """A step's events are being sent; returns its record's index (None: not recorded)."""

    def delivered(self, index: int, when: float) -> None:
        """(any thread) The HTTP side delivered that step's events at `when` (perf_counter)."""

    def close(self) -> None:
        """The host loop has ended: write the record."""


@dataclass(frozen=True, slots=True)
class HostPlan(Generic[Info, E]):
    """What the engine side builds where it runs (picklable: it crosses to a spawned process)."""

    build_model: Callable[[], ServedModel[Info, E]]
    build_observer: Callable[[], HostObserver | None] | None = None  # None: no tracing


def freeze_startup_objects() -> None:
    """Once start-up is done, in each process: freeze the ~10^6 objects alive (torch, the model, FastAPI).
    A full collection walks them all holding the GIL for tens of milliseconds, the tail of the
    inter-token latency; frozen objects are never scanned again."""
    gc.collect()
    gc.freeze()
    log.info("froze %d start-up objects (gc.freeze)", gc.get_freeze_count())


class HostLoop(Generic[Info, E]):
    """Runs the model `plan` builds on the commands `accept` queues until Stop; results go to `send`."""

    def __init__(
        self, plan: HostPlan[Info, E], send: Callable[[m.ToClient[Info, E]], None], hold: bool
    ) -> None:
        self.plan, self.send, self.hold = plan, send, hold
        self.model: ServedModel[Info, E] | None = None
        self.observer = plan.build_observer() if plan.build_observer is not None else None
        self._inbox: queue.SimpleQueue[m.ToHost] = queue.SimpleQueue()
        self._pending: list[tuple[int, E | m.Ended]] = []  # the last step's events, until _flush sends them
        self._pending_timing: StepTiming | None = None

    def accept(self, message: m.ToHost) -> None:
        """(any thread) A message from the client."""
        if isinstance(message, m.Ask):
            answer = self.model.answer(message.question) if self.model is not None else None
            self.send(m.Answer(message.call_id, answer))
        elif isinstance(message, m.Delivered):
            if self.observer is not None:
                self.observer.delivered(message.trace_index, message.when)
        else:
            self._inbox.put(message)

    def run(self) -> bool:
        """Build the model, serve until Stop, fail what is left; False when start-up or the loop failed."""
        try:
            model = self.model = self.plan.build_model()
        except Exception as exc:
            log.exception("engine start-up failed")
            self.send(m.StartFailed(f"{type(exc).__name__}: {exc}"))
            return False
        freeze_startup_objects()
        if self.observer is not None:
            self.observer.serving()  # collections while serving (start-up's are not the question)
        self.send(m.Ready(model.info()))
        clean = True
        try:
            self._loop(model)
        except Exception:
            log.exception("the engine loop crashed; failing every request in flight")
            clean = False
        self._end_all(model, STOPPED)
        for message in self._messages(block=False):  # submitted after the last turn: refused
            if not isinstance(message, m.Command):
                for request_id in message.request_ids:
                    self.send(m.Admitted(request_id, STOPPED()))
        if self.observer is not None:
            self.observer.close()
        try:
            model.close()
        except Exception:
            log.exception("closing the served model failed")
            clean = False
        return clean

    def _loop(self, model: ServedModel[Info, E]) -> None:
        while True:
            for message in self._messages(block=not model.busy() and not model.has_idle_work()):
                if isinstance(message, m.Stop):
                    return
                if isinstance(message, m.Abort):
                    if model.abort(message.request_id):
                        self.send(m.Events(((message.request_id, m.ABORTED),)))
                elif isinstance(message, m.AbortAll):
                    self._end_all(model, partial(m.Unavailable, "draining", CUT))
                elif not isinstance(message, m.Command):
                    for request_id, result in zip(message.request_ids, model.submit(message), strict=True):
                        self.send(m.Admitted(request_id, result))
            if model.busy():
                self._step(model)
            if not model.busy():
                self._flush()  # no next launch to wait for
                if model.has_idle_work():
                    model.idle_work()
            model.publish(self._inbox.qsize())

    def _messages(self, block: bool) -> list[m.ToHost]:
        """Everything queued now; with block, wait for at least one message first."""
        messages = [self._inbox.get()] if block else []
        while not self._inbox.empty():  # this thread is the only reader: get_nowait() finds it
            messages.append(self._inbox.get_nowait())
        return messages

    def _step(self, model: ServedModel[Info, E]) -> None:
        """One step; its events are sent at once, or (hold) in the next step after its launch."""
        try:
            outcome = model.step(on_launched=self._flush)
        except EngineDeadError:
            raise  # fatal: run() ends the loop, sends what is held, fails what is left, reports it
        except Exception:
            log.exception("engine step failed; failing the requests in flight")
            self._end_all(model, partial(m.EngineFailure, STEP_FAILED))
            return
        self._pending += outcome.events
        self._pending_timing = outcome.timing
        if not self.hold:
            self._flush()

    def _flush(self) -> None:
        """Send the held events (with the step's trace record when tracing)."""
        batch, timing = self._pending, self._pending_timing
        if not batch:
            return
        self._pending, self._pending_timing = [], None
        index = None
        if self.observer is not None and timing is not None:
            index = self.observer.step(timing, time.perf_counter(), [rid for rid, _ in batch])
        self.send(m.Events(tuple(batch), index))

    def _end_all(self, model: ServedModel[Info, E], make_error: Callable[[], Exception]) -> None:
        """Send the held events (the requests' own go first), then end every request with an error."""
        self._flush()
        if request_ids := model.drain():
            self.send(m.Events(tuple((rid, make_error()) for rid in request_ids)))
