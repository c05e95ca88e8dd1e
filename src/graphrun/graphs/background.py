"""Background capture: one pass over the rungs, largest first, and the thread that drives it.

Background capture (GraphRunner(capture="background")) lets a server answer as soon as its weights are
loaded: calls run eager while the rungs are captured, largest first, and each rung switches to replay the
moment it is captured and verified. The owner of the graphs (the runner) does each step under its call
lock, so a capture never shares the static buffers with a replay. A BackgroundPass says which rungs are
pending and captures the next; a BackgroundCapture is the thread: it starts, stops between steps, and
never lets an exception escape it silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

import torch

from graphrun.graphs.capture import RungCapturer
from graphrun.graphs.failure import classify
from graphrun.graphs.inputs import InputLayout
from graphrun.graphs.spec import CaptureResult
from graphrun.graphs.status import RungStatus

log = logging.getLogger("graphrun.graphs.runner")  # the runner's story, under its name


class BackgroundCapture:
    """A daemon thread calling `step()` until it returns False or stop() is called.

    `step` captures one rung and says whether any was left to capture; it must not raise for a rung
    that fails (the runner records that rung as eager). Should it raise anyway, the thread logs the
    error and ends: the rungs still pending keep running eager, counted.
    """

    def __init__(self, step: Callable[[], bool], name: str) -> None:
        self._step = step
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"graphrun-capture-{name}", daemon=True)
        self._name = name
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set() and self._step():
                pass
        except Exception:
            log.exception("runner %s: background capture stopped; pending rungs stay eager", self._name)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; False if it is still running after `timeout` seconds."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Let the rung in progress finish, then end the thread (no rung is left half installed)."""
        self._stopping.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    @property
    def running(self) -> bool:
        """Whether the thread is still capturing."""
        return self._thread.is_alive()


class BackgroundPass:
    """One background pass over a spec's rungs: the rungs still pending, largest first, and their capture.

    The owner calls capture_next() under its call lock and installs what it returns. Before each rung the
    static inputs get the example back: calls replayed since the pass began left their own rows there,
    and warm-up and capture run the callable on them, so a callable with side effects (a KV-cache write
    at a slot the input names) would redo a live call's effects with other values. The example is what
    capture="now" sees.
    """

    def __init__(self, capturer: RungCapturer, inputs: InputLayout, name: str) -> None:
        self.pending = sorted(inputs.sizes, reverse=True)
        self._capturer = capturer
        self._buffers = inputs.static_buffers()
        with torch.inference_mode():
            self._example = [t.clone() for t in self._buffers]
        self._name = name
        self._num_sizes = len(inputs.sizes)
        self._begun = False
        self._start = time.perf_counter()

    def capture_next(self) -> list[CaptureResult]:
        """Capture the largest pending rung (the pass's first step also compiles and learns the outputs).

        A rung the capture machinery could not even attempt (an error it does not classify) comes back
        eager rather than staying pending forever, and the pass goes on.
        """
        rung = self.pending[0]
        results: list[CaptureResult] = []
        with torch.inference_mode():
            for buffer, example in zip(self._buffers, self._example, strict=True):
                buffer.copy_(example)
        try:
            if not self._begun:
                results.append(self._capturer.begin())
                self._begun = True
            results.append(self._capturer.capture_one(rung))
        except Exception as exc:
            self._capturer.discard(rung)
            log.warning("runner %s: background capture of batch size %d failed: %s", self._name, rung, exc)
            status = RungStatus(rung, False, reason=classify(exc), detail=str(exc).strip()[:300])
            results.append(CaptureResult({}, {rung: status}, None))
        self.pending.pop(0)
        if not self.pending:
            self._example = []
        return results

    def log_done(self, statuses: Iterable[RungStatus]) -> None:
        """One INFO line once every rung was reached: what was captured, in how long."""
        captured = sorted(s.size for s in statuses if s.captured)
        log.info(
            "runner %s: background capture done: %d/%d sizes captured %s in %.2f s",
            self._name, len(captured), self._num_sizes, captured,
            time.perf_counter() - self._start,
        )  # fmt: skip
