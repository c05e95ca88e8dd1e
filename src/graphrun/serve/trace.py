"""A timeline of the engine host (thread or process): where a served stream's inter-token gaps come from.

With `graphrun serve --trace-file <path>` (or GRAPHRUN_SERVE_TRACE) the host loop's observer records,
for every engine step, the host times inside step() (graphrun.step_timing.StepTiming), when the step's
tokens were sent to the HTTP side, when its event loop delivered them, and which requests got a token;
the file is written when the host loop ends. The client's observer writes when each stream's chunk was sent.
`summarize_trace` splits a stream's gap into its parts: the engine step (device wait and host work),
the worker's own work between steps, and the event loop's delay before the tokens reach the stream.
Times are time.perf_counter() seconds. Tracing costs a few microseconds a step; it is off by default.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graphrun.stats import latency_ms
from graphrun.step_timing import StepTiming

log = logging.getLogger(__name__)

MAX_STEPS = 500_000  # a bound on memory (~200 B a step): a long-running server stops recording here
MAX_SENDS = 1_000_000  # the same for the server process's chunk writes (~100 B each)


def step_trace(path: Path | None) -> StepTrace | None:
    """The host loop's observer when tracing to `path` (None: off)."""
    return StepTrace(path) if path is not None else None


def send_trace(path: Path | None) -> SendTrace | None:
    """The client's observer when tracing to `path` (None: off): it writes <name>.sends.json beside it."""
    return SendTrace(path.with_name(path.stem + ".sends.json")) if path is not None else None


class StepTrace:
    """(HostObserver) Per-step records, appended by the host loop; `delivered` comes from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.steps: list[dict[str, Any]] = []
        self.gc = Collections()
        self._lock = threading.Lock()
        self._full = False

    def serving(self) -> None:
        """Record this process's garbage collections from now (start-up's are not the question)."""
        self.gc.watch()

    def step(self, timing: StepTiming, posted: float, request_ids: Sequence[int]) -> int | None:
        """Add a step; returns its index (for `delivered`), or None once MAX_STEPS are recorded."""
        with self._lock:
            if len(self.steps) >= MAX_STEPS:
                if not self._full:
                    log.warning("serve trace: %d steps recorded; recording stops", MAX_STEPS)
                    self._full = True
                return None
            self.steps.append(
                {
                    "start": timing.start,
                    "launched": timing.launched,
                    "waited": timing.waited,
                    "end": timing.end,
                    "posted": posted,
                    "delivered": None,
                    "kind": timing.kind,
                    "rows": timing.rows,
                    "tokens": timing.tokens,
                    "waiting": timing.waiting,
                    "running": timing.running,
                    "seq_ids": list(request_ids),  # the requests' ids (one per event)
                }
            )
            return len(self.steps) - 1

    def delivered(self, index: int, when: float | None = None) -> None:
        """(event loop) The step's tokens were just put into their requests' queues at `when` (default: now).

        The server process sends `when` back to an engine process: perf_counter is CLOCK_MONOTONIC on
        Linux, one clock for every process.
        """
        when = time.perf_counter() if when is None else when
        with self._lock:
            self.steps[index]["delivered"] = when

    def close(self) -> None:
        """Write the steps and their summary as JSON (errors are logged: tracing never fails serving)."""
        collections = self.gc.stop()
        with self._lock:
            steps = list(self.steps)
        summary = {**summarize_trace(steps), "gc": summarize_collections(collections)}
        _write(
            self.path, {"summary": summary, "steps": steps, "collections": collections}, f"{len(steps)} steps"
        )


class SendTrace:
    """(ClientObserver) When each stream's chunks were handed to the HTTP layer: the gaps a client sees,
    before the network and the client's own work. Written next to the step trace as <name>.sends.json.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sends: list[tuple[float, int]] = []  # (perf_counter, request id); appended on the event loop
        self.gc = Collections()

    def serving(self) -> None:
        """Record this process's garbage collections from now."""
        self.gc.watch()

    def sent(self, request_id: int) -> None:
        """A chunk of `request_id` was just written (recording stops at MAX_SENDS)."""
        if len(self.sends) < MAX_SENDS:
            self.sends.append((time.perf_counter(), request_id))

    def close(self) -> None:
        """Write the sends and their summary as JSON (errors are logged)."""
        collections = self.gc.stop()
        last: dict[int, float] = {}
        gaps: list[float] = []
        for when, request_id in self.sends:
            if request_id in last:
                gaps.append(when - last[request_id])
            last[request_id] = when
        summary = {"send_gap": _stats_ms(gaps), "gc": summarize_collections(collections)}
        payload = {"summary": summary, "sends": self.sends, "collections": collections}
        _write(self.path, payload, f"{len(self.sends)} sends")


class Collections:
    """This process's garbage collections while watched: generation, start, end (perf_counter)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._start: float | None = None

    def watch(self) -> None:
        """Start recording (gc.callbacks)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def stop(self) -> list[dict[str, Any]]:
        """Stop recording; the records."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        return list(self.records)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._start = now
        elif self._start is not None and len(self.records) < MAX_STEPS:
            self.records.append({"generation": info["generation"], "start": self._start, "end": now})
            self._start = None


def _write(path: Path, payload: dict[str, Any], what: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload))
        log.info("serve trace: wrote %s to %s", what, path)
    except OSError as exc:
        log.error("serve trace: could not write %s: %s", path, exc)


def _stats_ms(values: Sequence[float]) -> dict[str, float | None]:
    """Count, p50/p90/p99 and mean (graphrun.stats, as the benchmark has them) and max of seconds, in ms."""
    return {"n": len(values), **latency_ms(values), "max": max(values) * 1e3 if values else None}


def summarize_trace(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles (ms) of each part of the engine loop, per batch kind, and the server-side token gaps.

    - step: start -> end of engine.step(); split into schedule+launch, device wait, resolve.
    - between: end of one step() -> start of the next (worker: outputs, posting, commands, metrics).
    - delivery: posted -> the event loop ran the delivery.
    - token_gap: per request, between consecutive deliveries of its tokens (what ITL is on the server,
      before the HTTP write and the client).
    """
    out: dict[str, Any] = {"num_steps": len(steps)}
    kinds = sorted({str(s["kind"]) for s in steps})
    out["step"] = {k: _stats_ms([s["end"] - s["start"] for s in steps if str(s["kind"]) == k]) for k in kinds}
    out["launch"] = _stats_ms([s["launched"] - s["start"] for s in steps])
    out["wait"] = _stats_ms([s["waited"] - s["launched"] for s in steps])
    out["resolve"] = _stats_ms([s["end"] - s["waited"] for s in steps])
    out["between"] = _stats_ms([b["start"] - a["end"] for a, b in itertools.pairwise(steps)])
    out["period"] = _stats_ms([b["start"] - a["start"] for a, b in itertools.pairwise(steps)])
    out["delivery"] = _stats_ms([s["delivered"] - s["posted"] for s in steps if s["delivered"] is not None])
    last_seen: dict[int, float] = {}
    gaps: list[float] = []
    for s in steps:
        when = s["delivered"]
        if when is None:
            continue
        for seq_id in s["seq_ids"]:
            if seq_id in last_seen:
                gaps.append(when - last_seen[seq_id])
            last_seen[seq_id] = when
    out["token_gap"] = _stats_ms(gaps)
    return out


def summarize_collections(collections: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per generation: how many collections ran and their durations (ms)."""
    return {
        f"gen{g}": _stats_ms([c["end"] - c["start"] for c in collections if c["generation"] == g])
        for g in (0, 1, 2)
    }
