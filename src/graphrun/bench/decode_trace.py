"""`--profile`'s measurement: the device kernels of the engine's graphed decode step, by torch.profiler.

Kernels launched by a CUDA graph replay are seen: CUPTI's kernel activity records carry each graph node
as its own kernel, with its name and device timestamps, though no CPU-side launch call matches them (so
torch.profiler keeps them as device events of their own, with no parent op; hence the raw device events
are read here, not key_averages' per-op view). Reported working with the profiler attached after
capture on CUDA 13 / torch 2.13 (tokenspeed PR #1348: 933k kernel events over 340 replays) and on an
H100 with CUDA 13.1 (tracy PR #1318). Known hazards: an illegal memory access when CUPTI re-initialised
lazily between sessions around graphs on CUDA 11/12 (pytorch #75504), which torch avoids by disabling
that re-init (pytorch #101879, #107744); and a graph's while-node iterations past the first are not
traced (kineto #1062): the decode graphs have no conditional nodes. A profile that sees no kernels, or
a count that is not the same every replay, is reported as the batch's error, never as a profile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from graphrun.bench.decode_profile import PROFILE_REPLAYS, Kernel, class_floor_bytes, profile_summary

if TYPE_CHECKING:
    from graphrun.llm.engine import LLMEngine

__all__ = ["profile_step", "trace_kernels"]

log = logging.getLogger(__name__)


def trace_kernels(fn: Callable[[], object], calls: int) -> list[Kernel]:
    """Device kernels, memcpys and memsets of `calls` calls of `fn` (one synchronize after them)."""
    torch.cuda.synchronize()  # nothing queued before the window
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return [
        Kernel(event.name, event.time_range.start, event.time_range.end - event.time_range.start)
        for event in prof.events()
        if event.device_type == DeviceType.CUDA and not event.is_user_annotation  # not a GPU-side range
    ]


def profile_step(engine: LLMEngine, num_seqs: int, context: int, bandwidth: float) -> dict[str, Any]:
    """The profile (decode_profile.profile_summary) of the next decode step of `num_seqs` sequences
    holding `context` cached tokens each; a failure is recorded in the point, not raised."""
    point: dict[str, Any] = {"batch": num_seqs, "context": context}
    try:
        kernels = _trace_step(engine, num_seqs)
        floors = class_floor_bytes(engine.model_config, num_seqs, context, engine.dtype.itemsize)
        point.update(profile_summary(kernels, PROFILE_REPLAYS, floors, bandwidth))
    except (RuntimeError, ValueError) as exc:
        log.exception("decode bench: the profile of batch %d failed", num_seqs)
        point["error"] = f"{type(exc).__name__}: {exc}"
    return point


def _trace_step(engine: LLMEngine, num_seqs: int) -> list[Kernel]:
    """The kernels of PROFILE_REPLAYS greedy graph replays on the scheduled decode batch's inputs (the
    replays rewrite the same cache slots with the same values, so the batch then advances as usual)."""
    graphs, scheduler = engine.decode_graphs, engine.scheduler
    if graphs is None:
        raise RuntimeError("the engine captured no FULL decode graphs to profile")
    batch = scheduler.schedule()
    if batch is None or batch.kind != "decode" or len(batch.seqs) != num_seqs:
        raise RuntimeError(f"expected a decode batch of {num_seqs}, got {batch and batch.kind}")
    try:
        step = engine._pack_decode(batch)
        graphs.run(step, "greedy")  # leaves the inputs in the rung's static buffers
        runner = graphs.runners["greedy"]
        args, kwargs = runner.static_inputs(step.num_rows)
        kernels = trace_kernels(lambda: runner(*args, **kwargs), PROFILE_REPLAYS)
        tokens = graphs.run(step, "greedy").tolist()
    except Exception:
        scheduler.discard(batch)
        raise
    scheduler.update(batch, tokens)
    return kernels
