"""`graphrun bench zoo`: eager vs a hand-made CUDA graph vs GraphRunner on an MLP, an encoder and a convnet.

It answers: does the runner keep the raw graph's speedup (runner speedup / raw speedup); how many
microseconds it adds per call over bare replay and over the hand-written copy+replay; what capture costs
in seconds and pool memory; and whether a 9-rung encoder ladder stays near one top rung's pool. Every
mode is timed interleaved with a device sync around each call (see timing.py for why). On a machine
without CUDA everything runs float32 on the sim backend: a smoke test of the code path, not a measurement.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry
from torch import nn

from graphrun.bench.models import MODEL_NAMES, InputFn, build
from graphrun.bench.report import written
from graphrun.bench.timing import release_memory, summarize, time_interleaved
from graphrun.bench.zoo_report import CPU_NOTE, print_zoo, save_zoo, zoo_payload
from graphrun.errors import ConfigError
from graphrun.graphs.backends import SimBackend
from graphrun.graphs.runner import GraphRunner
from graphrun.graphs.verify import mismatch

log = logging.getLogger(__name__)

LADDER = (1, 2, 4, 8, 16, 24, 32, 48, 64)  # the "1..64 ladder (9 rungs)", cut at --ladder-max
MODES = ("eager", "raw_copy_replay", "raw_replay", "runner", "runner_zero_copy")
SIM_ITERS = 50  # the sim backend's timings mean nothing: cap them so a CPU smoke run stays short
MIB = 2**20


def ladder_sizes(ladder_max: int) -> tuple[int, ...]:
    """The 9-rung 1..64 ladder, cut below `ladder_max`, which is always the top rung."""
    if ladder_max < 1:
        raise ConfigError(f"--ladder-max must be >= 1, got {ladder_max}")
    return (*(s for s in LADDER if s < ladder_max), ladder_max)


@dataclass(frozen=True, slots=True)
class ZooSetup:
    """What the zoo runs and where, fixed once from the flags and validated here."""

    device: torch.device
    dtype: torch.dtype
    backend: str  # "cuda" or "sim"
    iters: int
    warmup: int
    models: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    ladder: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.iters < 1 or self.warmup < 0:
            raise ConfigError(f"--iters must be >= 1 and --warmup >= 0, got {self.iters} and {self.warmup}")
        unknown = [m for m in self.models if m not in MODEL_NAMES]
        if unknown or not self.models:
            raise ConfigError(f"--models: got {list(self.models)}; choose from {','.join(MODEL_NAMES)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"--batch-sizes must be positive integers, got {list(self.batch_sizes)}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ZooSetup:
        """CUDA with --dtype when a device is visible, else the sim backend in float32."""
        cuda = torch.cuda.is_available()
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        try:
            batch_sizes = tuple(int(b) for b in args.batch_sizes.split(",") if b.strip())
        except ValueError:
            raise ConfigError(
                f"--batch-sizes takes comma-separated integers, got {args.batch_sizes!r}"
            ) from None
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
        dtype = getattr(torch, args.dtype) if cuda else torch.float32
        backend, ladder = ("cuda" if cuda else "sim"), ladder_sizes(args.ladder_max)
        iters, warmup = (
            (args.iters, args.warmup) if cuda else (min(args.iters, SIM_ITERS), min(args.warmup, 5))
        )
        return cls(device, dtype, backend, iters, warmup, models, batch_sizes, ladder)

    def sync(self) -> None:
        """Wait for queued device work (nothing to wait for on the sim backend)."""
        if self.backend == "cuda":
            torch.cuda.synchronize(self.device)


class SimRawGraph:
    """CPU stand-in for cuda.RawGraph: one sim recording of `body`, replayed into the output it made."""

    def __init__(self, body: Callable[[], torch.Tensor]) -> None:
        held: list[torch.Tensor] = []
        self._graph = SimBackend().capture(lambda: held.append(body()))
        self.output = held[0]
        self.nbytes = self._graph.nbytes
        self.replay = self._graph.replay

    def release(self) -> None:
        """Drop the recording."""
        self._graph.release()


def _raw_graph(body: Callable[[], torch.Tensor], backend: str) -> Any:
    if backend == "cuda":
        from graphrun.graphs.backends.cuda import RawGraph

        return RawGraph(body)
    return SimRawGraph(body)


def _make_runner(
    model: nn.Module, example: torch.Tensor, sizes: Sequence[int], name: str, setup: ZooSetup
) -> tuple[GraphRunner, float, int]:
    """A runner with its own metrics registry, wall seconds of its construction (capture), its pool bytes."""
    setup.sync()
    start = time.perf_counter()
    registry = CollectorRegistry()
    runner = GraphRunner(
        model, (example,), sizes=list(sizes), backend=setup.backend, name=name, registry=registry
    )
    setup.sync()
    seconds = time.perf_counter() - start
    return runner, seconds, runner.backend.pool_bytes()


# ----- one model at one batch size ---------------------------------------------------------------------


def _correctness(
    runner: GraphRunner, raw: Any, static_x: torch.Tensor, x: torch.Tensor, want: torch.Tensor, zero_copy: Any
) -> dict[str, Any]:
    """Raw replay, runner(x) and the zero-copy call against eager on the same (random) input."""
    static_x.copy_(x)
    raw.replay()
    got = {"raw": raw.output.clone(), "runner": runner(x).clone()}  # runner outputs alias static buffers
    if zero_copy is not None:
        args, kwargs = zero_copy
        args[0].copy_(x)
        got["zero_copy"] = runner(*args, **kwargs).clone()
    bad = [f"{path}: {problem}" for path, out in got.items() if (problem := mismatch(out, want)) is not None]
    return {
        "outputs_match": not bad,
        "mismatch": "; ".join(bad),
        "output_finite": bool(torch.isfinite(want).all()),
        "max_abs_diff": {
            path: float((out.double() - want.double()).abs().max()) for path, out in got.items()
        },
    }


def _callables(
    model: nn.Module, x: torch.Tensor, raw: Any, static_x: torch.Tensor, runner: GraphRunner, zero_copy: Any
) -> dict[str, Callable[[], object]]:
    def copy_replay() -> None:
        static_x.copy_(x)  # the hand-written pattern: copy into the static input, replay
        raw.replay()

    fns: dict[str, Callable[[], object]] = {
        "eager": lambda: model(x),
        "raw_copy_replay": copy_replay,
        "raw_replay": raw.replay,
    }
    if zero_copy is not None:  # the rung was captured; otherwise the runner would only time eager
        args, kwargs = zero_copy
        fns["runner"] = lambda: runner(x)
        fns["runner_zero_copy"] = lambda: runner(*args, **kwargs)
    return fns


def _derived(stats: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """Speedups over eager and the runner's overhead over raw replay (medians; us = ms * 1e3)."""
    med = {mode: s["median_ms"] for mode, s in stats.items()}
    eager, copy_replay, replay = med["eager"], med["raw_copy_replay"], med["raw_replay"]
    out: dict[str, float | None] = {
        "speedup_raw": eager / copy_replay,
        "speedup_raw_replay": eager / replay,
        "speedup_runner": None,
        "speedup_ratio": None,
        "overhead_us_vs_replay": None,
        "overhead_us_vs_copy_replay": None,
        "zero_copy_overhead_us_vs_replay": None,
    }
    runner, zero_copy = med.get("runner"), med.get("runner_zero_copy")
    if runner is not None and zero_copy is not None:
        out["speedup_runner"] = eager / runner
        out["speedup_ratio"] = copy_replay / runner  # = runner speedup / raw speedup
        out["overhead_us_vs_replay"] = (runner - replay) * 1e3
        out["overhead_us_vs_copy_replay"] = (runner - copy_replay) * 1e3
        out["zero_copy_overhead_us_vs_replay"] = (zero_copy - replay) * 1e3
    return out


def _bench_one(
    name: str, batch: int, model: nn.Module, make_input: InputFn, setup: ZooSetup
) -> dict[str, Any]:
    """One model at one batch size: check outputs against eager, then time every mode side by side."""
    example, x = make_input(batch), make_input(batch)  # capture on one input, check and time on another
    want = model(x).clone()
    static_x = example.clone()
    raw = _raw_graph(lambda: model(static_x), setup.backend)
    runner, construct_s, pool_bytes = _make_runner(model, example, (batch,), f"zoo-{name}-{batch}", setup)
    statuses = runner.status()
    captured = all(s.captured for s in statuses)
    zero_copy = runner.static_inputs(batch) if captured else None
    row: dict[str, Any] = {
        "model": name,
        "batch": batch,
        "runner_captured": captured,
        "runner_status": [str(s) for s in statuses],
        **_correctness(runner, raw, static_x, x, want, zero_copy),
    }
    fns = _callables(model, x, raw, static_x, runner, zero_copy)
    stats = {
        mode: summarize(t) for mode, t in time_interleaved(fns, setup.iters, setup.warmup, setup.sync).items()
    }
    row.update({mode: stats.get(mode) for mode in MODES}, **_derived(stats))
    row.update(
        capture_seconds=runner.stats.capture_seconds,
        construct_seconds=construct_s,
        graph_mib=pool_bytes / MIB,
        raw_graph_mib=raw.nbytes / MIB,
        runner_replayed=runner.stats.num_replayed,
        runner_eager_calls=sum(runner.stats.eager_fallback.values()),
    )
    runner.close()
    raw.release()
    return row


# ----- ladder -----------------------------------------------------------------------------------------


def _capture_only(
    model: nn.Module, example: torch.Tensor, sizes: Sequence[int], name: str, setup: ZooSetup
) -> tuple[float, float, bool]:
    """Build one runner on a clean allocator: wall seconds, pool MiB, all rungs captured; then free it."""
    runner, seconds, pool_bytes = _make_runner(model, example, sizes, name, setup)
    pool_mib, complete = pool_bytes / MIB, all(s.captured for s in runner.status())
    runner.close()
    del runner
    release_memory()
    return seconds, pool_mib, complete


def _ladder_test(name: str, model: nn.Module, make_input: InputFn, setup: ZooSetup) -> dict[str, Any]:
    """The whole ladder in one runner, then its top rung alone in another (each backend has its own pool)."""
    example, sizes = make_input(1), setup.ladder
    seconds, pool_mib, complete = _capture_only(model, example, sizes, f"zoo-ladder-{name}", setup)
    top_seconds, top_mib, top_complete = _capture_only(model, example, sizes[-1:], f"zoo-top-{name}", setup)
    return {  # pool_ratio: the ladder's pool over the top rung's alone
        "model": name,
        "sizes": list(sizes),
        "capture_seconds": seconds,
        "pool_mib": pool_mib,
        "all_captured": complete and top_complete,
        "top_rung": sizes[-1],
        "top_capture_seconds": top_seconds,
        "top_pool_mib": top_mib,
        "pool_ratio": pool_mib / top_mib if top_mib > 0 else None,
    }


def run_zoo(args: argparse.Namespace) -> int:
    """Run `graphrun bench zoo`; exit status 1 if a runner output differed from eager or was not captured,
    or if the run failed part-way (what it measured until then is still printed and written)."""
    setup = ZooSetup.from_args(args)
    if setup.backend == "sim":
        print(f"{CPU_NOTE} (float32 forced, --dtype ignored, {setup.iters} iters, {setup.warmup} warmup)")
    rows: list[dict[str, Any]] = []
    ladders: list[dict[str, Any]] = []
    error = None
    try:
        _measure_all(setup, args.small, rows, ladders)
    except Exception as exc:  # a model that fails to build or run: keep the rows measured before it
        log.exception("zoo: the run failed; writing what it measured")
        error = f"{type(exc).__name__}: {exc}"
    dtype = str(setup.dtype).removeprefix("torch.")
    ladder = ladders[0] if ladders else None
    payload = zoo_payload(rows, ladder, setup.backend, dtype, args.small, setup.iters, setup.warmup, error)
    print_zoo(payload)
    log.info("zoo: wrote %s", written(*save_zoo(payload, Path(args.out))))
    return 0 if payload["ok"] else 1


def _measure_all(
    setup: ZooSetup, small: bool, rows: list[dict[str, Any]], ladders: list[dict[str, Any]]
) -> None:
    """Every model and batch size, appending each row as it is measured (so a failure keeps them)."""
    with torch.inference_mode():
        for name in setup.models:
            model, make_input = build(name, small, setup.dtype, setup.device)
            for batch in setup.batch_sizes:
                log.info("zoo: %s batch %d", name, batch)
                rows.append(_bench_one(name, batch, model, make_input, setup))
                release_memory()
            if name == "encoder":  # the ladder test reuses the encoder already built
                log.info("zoo: %s ladder %s", name, setup.ladder)
                ladders.append(_ladder_test(name, model, make_input, setup))
            del model, make_input
            release_memory()
