"""A closed loop of C load workers spread over P client processes: one shared cursor, results merged here.

One Python process that sends, parses and checks every request is itself a bottleneck: past a few
hundred requests (or thousands of stream chunks) a second its one core, not the server, sets the
throughput and stretches the tail. `run_pool` therefore splits the C workers over P spawned processes,
as C separate clients would be. Each process runs `target(cursor, share, *args)` on its own event loop
(uvloop when installed) with its own HTTP connections: it may first send warm-up items (`cursor.take()`
hands out the process's own share of the warm-up indexes, so every process warms up), then calls
`cursor.begin()`, which reports ready and blocks until every process is ready and the parent starts the
clock; from then on `cursor.take()` hands out timed indexes from one counter shared by every process,
so the loop stays closed and in order. Every result goes back to the parent through one queue, tagged
warm-up or timed; each process reports when it ended and its CPU seconds from the start
(time.process_time: user + system), so a saturated client is visible.
Times are perf_counter, CLOCK_MONOTONIC on Linux: one clock across processes. P=1 runs the same target
in this process, without spawning.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
WARMUP, TIMED = "warmup", "timed"


@dataclass(frozen=True, slots=True)
class ProcessLoad:
    """One client process of a timed run: seconds from the start to its last answer, its CPU seconds."""

    busy_s: float
    cpu_s: float

    @property
    def cpu_share(self) -> float | None:
        """CPU seconds per busy second: near 1, this process was the limit."""
        return self.cpu_s / self.busy_s if self.busy_s > 0 else None


@dataclass(frozen=True, slots=True)
class PoolRun:
    """What `run_pool` collected: results in arrival order (warm-up and timed), wall seconds, per process."""

    warmup: tuple[Any, ...]
    results: tuple[Any, ...]
    wall_s: float  # the start -> the last process's end
    processes: tuple[ProcessLoad, ...]


class Cursor:
    """A client process's view of the loop: `take` the next index, `post` a result, `begin` the timed run."""

    def __init__(
        self,
        counter: Any,
        sizes: tuple[int, int],
        rank: tuple[int, int],
        post: Callable[[tuple[str, Any]], None],
        wait_start: Callable[[], None],
    ) -> None:
        self._counter, self._size, self._post, self._wait_start = counter, sizes[1], post, wait_start
        self._warmup = iter(range(rank[0], sizes[0], rank[1]))  # this process's own slice: every one warms
        self.phase = WARMUP
        self.cpu_at_start = 0.0

    def take(self) -> int | None:
        """The next index of the current phase (warm-up, then timed), None once every one is taken."""
        if self.phase == WARMUP:
            return next(self._warmup, None)
        counter, size = self._counter, self._size
        with counter.get_lock():
            index = int(counter.value)
            if index >= size:
                return None
            counter.value = index + 1
        return index

    def post(self, result: Any) -> None:
        """Hand one result to the parent, tagged with the current phase."""
        self._post(("result", (self.phase, result)))

    def begin(self) -> None:
        """Warm-up done: wait for the common start (blocking), then hand out timed indexes."""
        self._wait_start()
        self.phase = TIMED
        self.cpu_at_start = time.process_time()


@dataclass(frozen=True, slots=True)
class _Hooks:
    on_result: Callable[[Any], None]
    on_start: Callable[[], None]


def _ignore(result: Any) -> None:
    """No per-result hook."""


def _nothing() -> None:
    """No start hook."""


Target = Callable[..., Coroutine[Any, Any, None]]  # target(cursor, concurrency, *args)


def run_in_loop(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop when it is installed (the `serve` extra brings it): less client overhead."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def shares(concurrency: int, processes: int) -> list[int]:
    """`concurrency` workers over `processes` processes, as even as can be (the first ones take the rest)."""
    return [concurrency // processes + (i < concurrency % processes) for i in range(processes)]


def run_pool(
    target: Target,
    args: tuple[Any, ...],
    concurrency: int,
    processes: int,
    num_items: int,
    num_warmup: int = 0,
    on_result: Callable[[Any], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> PoolRun:
    """Run `target` in `processes` client processes (1: here) with `concurrency` workers between them.

    `target` must be a module-level coroutine function (the children import it); `on_result` sees each
    timed result as it arrives; `on_start` runs once every process has warmed up, before the clock starts
    (to read the server's counters between warm-up and timed run).
    """
    hooks = _Hooks(on_result or _ignore, on_start or _nothing)
    processes = max(1, min(processes, concurrency, max(num_items, 1)))
    ctx = mp.get_context("spawn")  # no inherited threads or sockets; the children import the target
    counter = ctx.Value("i", 0)  # the next timed index, shared by every process
    sizes = (num_warmup, num_items)
    if processes == 1:
        return _run_here(target, args, concurrency, counter, sizes, hooks)
    start_event = ctx.Event()
    messages: mp.Queue[tuple[str, Any]] = ctx.Queue()
    children = [
        ctx.Process(
            target=_child,
            args=(
                target,
                args,
                share,
                counter,
                (num_warmup, num_items),
                (i, processes),
                start_event,
                messages,
            ),
            name=f"graphrun-bench-client-{i}",
            daemon=True,
        )
        for i, share in enumerate(shares(concurrency, processes))
    ]
    for child in children:
        child.start()
    try:
        return _collect(children, messages, start_event, hooks)
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()


def _run_here(
    target: Target,
    args: tuple[Any, ...],
    concurrency: int,
    counter: Any,
    sizes: tuple[int, int],
    hooks: _Hooks,
) -> PoolRun:
    collected: dict[str, list[Any]] = {WARMUP: [], TIMED: []}
    start = [0.0]

    def post(message: tuple[str, Any]) -> None:
        phase, result = message[1]
        collected[phase].append(result)
        if phase == TIMED:
            hooks.on_result(result)

    def wait_start() -> None:
        hooks.on_start()
        start[0] = time.perf_counter()

    cursor = Cursor(counter, sizes, (0, 1), post, wait_start)
    run_in_loop(target(cursor, concurrency, *args))
    if cursor.phase != TIMED:
        raise RuntimeError("the load target never called cursor.begin()")
    end, cpu = time.perf_counter(), time.process_time() - cursor.cpu_at_start
    return PoolRun(
        tuple(collected[WARMUP]), tuple(collected[TIMED]), end - start[0], (ProcessLoad(end - start[0], cpu),)
    )


def _collect(
    children: list[Any],
    messages: mp.Queue[tuple[str, Any]],
    start_event: Any,
    hooks: _Hooks,
) -> PoolRun:
    """Wait for every child to be ready, start the clock, gather results until every child ended."""
    collected: dict[str, list[Any]] = {WARMUP: [], TIMED: []}
    ready, ends = 0, list[tuple[float, float]]()  # (end time, CPU seconds) per child
    start = 0.0
    while len(ends) < len(children):
        kind, value = _expect(messages, children)
        if kind == "ready":
            ready += 1
            if ready == len(children):  # every child warmed up and is waiting: start the clock
                hooks.on_start()
                start = time.perf_counter()
                start_event.set()
        elif kind == "result":
            phase, result = value
            collected[phase].append(result)
            if phase == TIMED:
                hooks.on_result(result)
        elif kind == "end":
            ends.append(value)
    loads = tuple(ProcessLoad(end - start, cpu) for end, cpu in ends)
    wall = max(end for end, _ in ends) - start
    return PoolRun(tuple(collected[WARMUP]), tuple(collected[TIMED]), wall, loads)


def _expect(messages: mp.Queue[tuple[str, Any]], children: list[Any]) -> tuple[str, Any]:
    """The next message from a client process; raises when one failed or died."""
    while True:
        try:
            message = messages.get(timeout=1.0)
        except queue.Empty:
            dead = [c.name for c in children if c.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"client process {dead[0]} died") from None
            continue
        if message[0] == "error":
            raise RuntimeError(f"a client process failed: {message[1]}")
        return message


def _child(
    target: Target,
    args: tuple[Any, ...],
    concurrency: int,
    counter: Any,
    sizes: tuple[int, int],
    rank: tuple[int, int],
    start_event: Any,
    messages: mp.Queue[tuple[str, Any]],
) -> None:
    """(a child) run the target; its end time and CPU seconds, or its error, go to the parent."""

    def wait_start() -> None:
        messages.put(("ready", None))
        start_event.wait()

    try:
        cursor = Cursor(counter, sizes, rank, messages.put, wait_start)
        run_in_loop(target(cursor, concurrency, *args))
        if cursor.phase != TIMED:
            raise RuntimeError("the load target never called cursor.begin()")
        messages.put(("end", (time.perf_counter(), time.process_time() - cursor.cpu_at_start)))
    except BaseException as exc:  # reported to the parent, which raises it
        messages.put(("error", f"{type(exc).__name__}: {exc}"))
