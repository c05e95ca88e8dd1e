"""Timing helpers: per-call times, their summary, and side-by-side (interleaved) measurement.

Why "host" timing (synchronize before and after every call, read the host clock): a graph's gain is host
overhead removed, so a comparison of eager, raw replay and the runner must count host time. Timing each
call alone from an idle device measures host work + device work of that call, the latency a single
request sees, and makes the runner's per-call host cost show up as a difference of medians. CUDA events
("events" mode) measure device time only; while the host stays ahead of the device they hide host
overhead, which is what is being compared.
Interleaving the modes in rounds spreads clock, thermal and allocator drift over all of them instead of
charging it to whichever mode ran last.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch

Sync = Callable[[], None]
TIMING_MODES = ("host", "events")


def time_calls(
    fn: Callable[[], object], iters: int, warmup: int, sync: Sync, *, mode: str = "host"
) -> list[float]:
    """Seconds per call of `fn`, after `warmup` untimed calls; `sync` waits for the device."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if mode not in TIMING_MODES:
        raise ValueError(f"mode must be one of {TIMING_MODES}, got {mode!r}")
    for _ in range(warmup):
        fn()
    if mode == "events":
        return _time_events(fn, iters, sync)
    clock = time.perf_counter
    times = []
    for _ in range(iters):
        sync()
        start = clock()
        fn()
        sync()
        times.append(clock() - start)
    return times


def _time_events(fn: Callable[[], object], iters: int, sync: Sync) -> list[float]:
    """Device time per call between CUDA events on the current stream; one sync at the end."""
    if not torch.cuda.is_available():
        raise ValueError("mode='events' needs a CUDA device; use mode='host' on the CPU")
    pairs = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)
    ]
    sync()
    for start, end in pairs:
        start.record()
        fn()
        end.record()
    sync()
    return [start.elapsed_time(end) / 1e3 for start, end in pairs]


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, p99 (nearest rank) and mean of per-call seconds, in milliseconds."""
    if not times:
        raise ValueError("summarize needs at least one time")
    ordered = sorted(times)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p99_ms": p99 * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3,
    }


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    iters: int,
    warmup: int,
    sync: Sync,
    *,
    rounds: int = 10,
    mode: str = "host",
) -> dict[str, list[float]]:
    """Per-name seconds per call: warm each callable, then alternate them in `rounds` rounds of iters/rounds.

    The order rotates each round so no callable always runs right after the same other one.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    rounds = max(1, min(rounds, iters))
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        chunk = iters // rounds + (1 if r < iters % rounds else 0)
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            times[name] += time_calls(fns[name], chunk, 0, sync, mode=mode)
    return times


def release_memory() -> None:
    """Collect garbage and return cached device memory: the next measurement starts on a clean allocator."""
    if not torch.cuda.is_available():  # nothing cached to return; a full collection costs ~0.2 s
        return
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def graph_replay_medians(
    bodies: Mapping[str, Callable[[], object]], stage: Callable[[int], None], iters: int, warmup: int
) -> dict[str, float]:
    """Median device microseconds per body, each captured alone in a CUDA graph (CUDA only).

    Every body runs once eagerly first (Triton compiles, the allocator warms outside capture), then is
    captured. The graphs replay in interleaved rounds, `warmup` untimed then `iters` timed; before every
    replay `stage(round)` writes that round's inputs into the static tensors the bodies read (outside the
    timed region, so no graph times on stale or all-zero inputs), and each replay sits between two CUDA
    events.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    graphs = {}
    for name, body in bodies.items():
        stage(0)
        body()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()
        graphs[name] = graph
    events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {name: [] for name in graphs}
    for r in range(warmup + iters):
        for name, graph in graphs.items():
            stage(r)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            if r >= warmup:
                events[name].append((start, end))
    torch.cuda.synchronize()
    return {name: 1e3 * statistics.median(s.elapsed_time(e) for s, e in ev) for name, ev in events.items()}
