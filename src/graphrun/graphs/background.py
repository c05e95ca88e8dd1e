"""The thread of a background capture: it captures one rung per step until none is pending.

Background capture (GraphRunner(capture="background")) lets a server answer as soon as its weights are
loaded: calls run eager while the rungs are captured, largest first, and each rung switches to replay the
moment it is captured and verified. The owner of the graphs (the runner) does each step under its call
lock, so a capture never shares the static buffers with a replay; this module only owns the thread: it
starts it, stops it between steps, and never lets an exception escape it silently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


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
