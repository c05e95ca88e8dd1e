"""How long this machine takes to wake a sleeping process: the floor under every serving hop.

A token crosses three processes on its way to a client (engine -> server -> client), and each hop wakes
a process that sleeps between steps. On a quiet bare-metal host that costs tens of microseconds; on a
busy virtual machine an idle vCPU can take milliseconds to run again, and no code in the server can win
that back. `measure_wakeup` times it directly: a parent writes its clock to a pipe every `interval_s`,
a child that sleeps in recv (or spins on poll) notes how late each message arrived. The serving
benchmark records it next to its inter-token latencies so a noisy machine shows as one.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from multiprocessing.connection import Connection
from typing import Any

from graphrun.stats import latency_ms


def _receiver(conn: Connection, count: int, spin: bool) -> None:
    """(child) Receive `count` send times; send back how late each one arrived, in seconds."""
    late = []
    conn.send("ready")
    for _ in range(count):
        if spin:
            while not conn.poll(0):
                pass
        sent = conn.recv()
        late.append(time.perf_counter() - sent)  # CLOCK_MONOTONIC: one clock for every process
    conn.send(late)


def _expect(conn: Connection, what: str) -> Any:
    if not conn.poll(60):
        raise RuntimeError(f"the wake-up probe's child sent no {what} within 60 s")
    return conn.recv()


def measure_wakeup(count: int = 2000, interval_s: float = 0.002, spin: bool = False) -> dict[str, Any]:
    """Pipe delivery latency to a process sleeping in recv (or spinning, with spin): ms percentiles."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(child, count, spin), name="graphrun-wakeup", daemon=True)
    proc.start()
    try:
        _expect(parent, "ready")  # the child has started (a spawn imports for a second or more)
        for _ in range(count):
            time.sleep(interval_s)  # the child has gone back to sleep (or spins) by now
            parent.send(time.perf_counter())
        late = _expect(parent, "its latencies")
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return {"mode": "spin" if spin else "sleep", "interval_ms": interval_s * 1000, **latency_ms(late)}
