"""The engine loop: the one place an LLMEngine runs while serving, in a thread or a process of its own.

LLMEngine is not thread-safe and its step() blocks for a whole forward pass, so it never runs on the
event loop. The loop takes commands from a queue (submit, abort, abort_all, stop), runs one step at a
time while there is work, and sends what happens to the requests through an `Outbox`: admission results
and, once per step, every request's new token or finish. abort_all (the drain deadline passed) ends each
request with a 503 error, never a finish reason: the client sees that its answer was cut. Where the
events go is the outbox's business (worker.py: straight to the event loop of this process, or down a
pipe to the server process), so this file holds no asyncio and no IPC.

When a step's events are sent depends on where the receiver runs (`hold`):
- engine thread (hold=True): they are held back and sent right after the next batch is launched
  (engine.step's on_launched). The event loop shares this process's GIL, so waking it while the next
  batch is being scheduled would delay that launch; after the launch, its work overlaps the device.
- engine process (hold=False): they go down the pipe as soon as the step's tokens are on the host.
  Sending costs the engine tens of microseconds and the device still has the next step queued
  (asynchronous scheduling), while holding them would add the next launch's host time, and every
  hiccup in it, to each stream's inter-token gap.

Background capture (--capture background): under load, step() takes a graph rung now and then (a quarter
of the engine's time at most, llm/background_graphs.py); while idle, the loop polls its queue instead of
blocking on it and gives each turn to the next rung, so an idle server captures at full speed and a
request arriving meanwhile waits for one rung at most.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from graphrun.llm.engine import LLMEngine, StepTiming
from graphrun.serve.metrics import EngineMetrics
from graphrun.serve.request import (
    EngineFailure,
    EngineRequest,
    Event,
    PromptCached,
    PromptLogprobs,
    Unavailable,
)
from graphrun.serve.trace import StepTrace

log = logging.getLogger(__name__)

# ("submit", EngineRequest) | ("submit_choices", [EngineRequest, ...]) (the n choices of one prompt) |
# ("abort", key) | ("abort_all", None) | ("stop", None)
Command = tuple[str, Any]


class Outbox(Protocol):
    """Where the engine loop's results go."""

    def admitted(self, request: EngineRequest, result: int | Exception) -> None:
        """The request's seq id, or why the engine refused it."""

    def events(self, batch: list[tuple[EngineRequest, Event]], trace_index: int | None) -> None:
        """One step's events (or failures), in order; trace_index: the step's record in the trace."""


class EngineLoop:
    """Runs `engine` on the commands of `inbox` until a stop command; results go to `outbox`."""

    def __init__(
        self,
        engine: LLMEngine,
        inbox: queue.SimpleQueue[Command],
        outbox: Outbox,
        metrics: EngineMetrics,
        trace: StepTrace | None = None,
        hold: bool = True,
    ) -> None:
        self.engine, self.inbox, self.outbox, self.metrics, self.trace = engine, inbox, outbox, metrics, trace
        self.hold = hold  # send a step's events after the next launch (True) or at once (module docstring)
        self._by_seq: dict[int, EngineRequest] = {}  # admitted, not finished
        self._by_key: dict[Hashable, EngineRequest] = {}
        # the last step's events, until _flush sends them (after the next launch with hold, else at once)
        self._pending: list[tuple[EngineRequest, Event]] = []
        self._pending_timing: StepTiming | None = None

    def run(self) -> bool:
        """Serve until "stop", then end every request still here with 503; False when the loop crashed."""
        clean = True
        try:
            self._loop()
        except Exception:
            log.exception("the engine loop crashed; failing every request in flight")
            clean = False

        def gone() -> Exception:
            return Unavailable("stopped", "the server is shutting down")

        self._flush()
        self._fail_all(gone)
        for command, payload in self._commands(block=False):  # submitted after the last loop: refuse
            if command == "submit":
                self.outbox.admitted(payload, gone())
            elif command == "submit_choices":
                for request in payload:
                    self.outbox.admitted(request, gone())
        return clean

    def _loop(self) -> None:
        engine = self.engine
        while True:
            idle = not engine.has_unfinished()
            for command, payload in self._commands(block=idle and not engine.capture_pending):
                if command == "stop":
                    return
                if command == "submit":
                    self._add(payload)
                elif command == "submit_choices":
                    self._add_choices(payload)
                elif command == "abort":
                    request = self._by_key.get(payload)
                    if request is not None:
                        self._abort(request)
                elif command == "abort_all":
                    self._cut_short()
            if engine.has_unfinished():
                self._step()
            if not engine.has_unfinished():
                self._flush()  # no next launch to wait for
                if engine.capture_pending:  # background capture: idle time takes the next rung
                    engine.capture_step()
            self.metrics.publish(engine.scheduler, self.inbox.qsize())

    def _commands(self, block: bool) -> list[Command]:
        """Everything queued now; with block, wait for at least one command first."""
        commands = [self.inbox.get()] if block else []
        while True:
            try:
                commands.append(self.inbox.get_nowait())
            except queue.Empty:
                return commands

    def _add(self, request: EngineRequest) -> None:
        try:
            seq_id = self.engine.add_request(request.prompt_ids, request.params)
        except Exception as exc:  # RequestRejected / SamplingParamsError: 400; anything else: 500 for it only
            self.outbox.admitted(request, exc)
            return
        request.seq_id = seq_id
        self._by_seq[seq_id] = request
        self._by_key[request.key] = request
        self.metrics.prompt_tokens.inc(len(request.prompt_ids))
        self.outbox.admitted(request, seq_id)

    def _add_choices(self, requests: list[EngineRequest]) -> None:
        """The n choices of one prompt: one group in the engine (one prefill); all admitted or all refused."""
        first = requests[0]
        try:
            seq_ids = self.engine.add_choices(first.prompt_ids, first.params, len(requests))
        except Exception as exc:
            for request in requests:
                self.outbox.admitted(request, exc)
            return
        self.metrics.prompt_tokens.inc(len(first.prompt_ids))
        for request, seq_id in zip(requests, seq_ids, strict=True):
            request.seq_id = seq_id
            self._by_seq[seq_id] = request
            self._by_key[request.key] = request
            self.outbox.admitted(request, seq_id)

    def _forget(self, request: EngineRequest) -> None:
        assert request.seq_id is not None
        del self._by_seq[request.seq_id]
        del self._by_key[request.key]

    def _abort(self, request: EngineRequest) -> None:
        assert request.seq_id is not None
        self.engine.abort(request.seq_id)
        self._forget(request)
        self.outbox.events([(request, (None, "abort"))], None)

    def _cut_short(self) -> None:
        """The drain deadline passed: end every request with a 503 error, never a finish reason (an
        answer cut here is not complete, and a client must not take it for one)."""
        self._flush()  # the tokens the requests already have go first
        for seq_id in list(self._by_seq):
            self.engine.abort(seq_id)
        message = "the server is shutting down and its drain deadline passed before this request finished"
        self._fail_all(lambda: Unavailable("draining", message + "; retry it"))

    def _step(self) -> None:
        """One engine step; its events are sent at once, or (hold) in the next step after its launch."""
        engine = self.engine
        try:
            outputs = engine.step(on_launched=self._flush)
        except Exception:
            self._flush()
            log.exception("engine step failed; failing the %d requests in flight", len(self._by_seq))
            for seq_id in list(self._by_seq):
                engine.abort(seq_id)
            self._fail_all(lambda: EngineFailure("the engine step running this request failed (see the log)"))
            return
        now = time.monotonic()
        num_tokens = 0
        for out in outputs:
            request = self._by_seq.get(out.seq_id)
            if request is None:
                continue  # aborted while the step ran
            last = request.last_token_time
            if last is None and out.num_cached_tokens:
                self._pending.append((request, PromptCached(out.num_cached_tokens)))
            num_tokens += 1
            self.metrics.observe_token(last is None, now - (request.arrival if last is None else last))
            request.last_token_time = now
            reason = (out.finish_reason or "stop") if out.finished else None
            if out.prompt_logprobs is not None:
                self._pending.append((request, PromptLogprobs(out.prompt_logprobs)))
            if out.logprobs is not None:  # just before its token's event (deltas.py pairs them)
                self._pending.append((request, out.logprobs))
            self._pending.append((request, (out.new_token_id, reason)))
            if out.finished:
                self._forget(request)
        self.metrics.generation_tokens.inc(num_tokens)
        self._pending_timing = engine.last_step_timing
        if not self.hold:
            self._flush()

    def _flush(self) -> None:
        """Send the held events."""
        batch, timing = self._pending, self._pending_timing
        if not batch:
            return
        self._pending, self._pending_timing = [], None
        index = None
        if self.trace is not None and timing is not None:
            seq_ids = [request.seq_id for request, _ in batch if request.seq_id is not None]
            index = self.trace.record(timing, time.perf_counter(), seq_ids)
        self.outbox.events(batch, index)

    def _fail_all(self, make_error: Callable[[], Exception]) -> None:
        """End every tracked request with an error of its own (blocks are freed by the caller or the exit)."""
        requests = list(self._by_seq.values())
        self._by_seq.clear()
        self._by_key.clear()
        if requests:
            self.outbox.events([(request, make_error()) for request in requests], None)
