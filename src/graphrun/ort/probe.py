"""The start-up probe of one rung: run it through its binding until captured, then check it against eager.

Each rung runs `warmup_runs` times (ORT's first run of a gpu_graph_id is a regular run, the second
captures and replays: sessions.py, rule 5), then once more on fresh random inputs, whose outputs must
match the eager session's on the same inputs within the dtype tolerance (graphs/verify.py). A replay
that read stale addresses, or a graph that baked in the warm-up's data, fails here. Where padding is on,
a smaller batch padded up to the rung must match eager too: a model whose rows depend on each other
(a batch mean) gives a different answer when padded, so such a rung serves exact-size calls only.
An exception propagates: the runner decides whether it costs the rung or the whole graph session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter

import torch

from graphrun.graphs.status import CaptureFailure, RungStatus
from graphrun.graphs.verify import mismatch, random_like
from graphrun.ort.binding import RungBinding
from graphrun.ort.eager import EagerRun

WARMUP_RUNS = 2
PROBE_SEED = 0x0A7


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """What the probe checks: against eager or not, padded sizes or not, within which tolerance."""

    verify: bool
    pads: bool
    pad: str | float | int | None
    tolerance: tuple[float, float] | None


def probe_rung(
    binding: RungBinding, eager: EagerRun, example: Sequence[torch.Tensor], settings: ProbeSettings
) -> RungStatus:
    """Warm up (and capture) one rung, then verify it; its status: captured, exact-size only, or eager."""
    start = perf_counter()
    rung = binding.rung
    generator = torch.Generator().manual_seed(PROBE_SEED + rung)
    warm = _random_inputs(binding, example, rung, generator)
    for _ in range(WARMUP_RUNS):
        binding.copy_in(warm, rung, settings.pad)
        binding.run()
    problem = _check(binding, eager, _random_inputs(binding, example, rung, generator), rung, settings)
    seconds = perf_counter() - start
    if problem is not None:
        return RungStatus(
            rung, False, capture_seconds=seconds, reason=CaptureFailure.VERIFICATION, detail=problem
        )
    padded = settings.pads
    reason, detail = None, ""
    if settings.pads and rung > 1:
        smaller = _random_inputs(binding, example, rung - 1, generator)
        detail = _check(binding, eager, smaller, rung - 1, settings) or ""
        if detail:
            padded, reason = False, CaptureFailure.PADDING_MISMATCH
    return RungStatus(rung, True, binding.nbytes, seconds, reason=reason, detail=detail, padded=padded)


def _random_inputs(
    binding: RungBinding, example: Sequence[torch.Tensor], batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    return tuple(
        random_like(ex, spec.shape(batch_size), generator)
        for spec, ex in zip(binding.input_specs, example, strict=True)
    )


def _check(
    binding: RungBinding,
    eager: EagerRun,
    tensors: Sequence[torch.Tensor],
    batch_size: int,
    settings: ProbeSettings,
) -> str | None:
    """Run `tensors` on the rung; None when verification is off or every output matches eager."""
    binding.copy_in(tensors, batch_size, settings.pad)
    binding.run()
    if not settings.verify:
        return None
    want = eager(tensors, batch_size)
    for spec, got, expected in zip(binding.output_specs, binding.results(batch_size), want, strict=True):
        problem = mismatch(got, expected, settings.tolerance)
        if problem is not None:
            return f"output {spec.name!r} at batch size {batch_size}: {problem}"
    return None
