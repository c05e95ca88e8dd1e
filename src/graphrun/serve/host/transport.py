"""How messages travel between the client and the host loop: the interface, and the in-thread transport.

A transport starts the engine side, carries the client's messages to its host loop (`send`, any
thread), hands the host's messages to the client (`receive`) and says once, with why, that the engine
side has ended (`gone`). Here the host loop runs on a thread of this process (easy to debug, but it
shares the event loop's GIL): `receive` runs on that thread. pipe.py is the process transport.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Protocol

from graphrun.serve.host.host_loop import HostLoop, HostPlan
from graphrun.serve.host.messages import Stop, ToClient, ToHost

Receive = Callable[[ToClient], None]
Gone = Callable[[str], None]


class Transport(Protocol):
    @property
    def pid(self) -> int | None:
        """The process the host loop runs in, once started."""

    def start(self, receive: Receive, gone: Gone) -> None:
        """Start the engine side (on the event loop; returns at once)."""

    def send(self, message: ToHost) -> None:
        """Carry a message to the host loop (any thread); dropped once the engine side is gone."""

    def stop(self, timeout: float) -> None:
        """Ask the host loop to stop; wait up to `timeout` s for the engine side to end (any thread)."""


class ThreadTransport:
    """The host loop on a thread of this process."""

    def __init__(self, plan: HostPlan) -> None:
        self._plan = plan
        self._host: HostLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return os.getpid()

    def start(self, receive: Receive, gone: Gone) -> None:
        host = self._host = HostLoop(self._plan, receive, hold=True)

        def run() -> None:
            gone("thread ended" if host.run() else "thread failed")

        self._thread = threading.Thread(target=run, name="graphrun-engine", daemon=True)
        self._thread.start()

    def send(self, message: ToHost) -> None:
        if self._host is not None:
            self._host.accept(message)

    def stop(self, timeout: float) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.send(Stop())
            self._thread.join(timeout)
