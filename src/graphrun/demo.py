"""`graphrun demo`: the embedded default job — a small built-in MLP run eager and through a GraphRunner.

Why an MLP at small batch: each layer is a few microseconds of GPU work, so eager time is mostly Python
and kernel-launch overhead, which one graph replay removes. The demo times both per batch size, checks
the graph's output against eager, and shows a batch above the top rung running eager and being counted.
On a machine without CUDA it uses the sim backend, which reproduces graph semantics but not speed.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from graphrun.errors import BackendUnavailableError
from graphrun.graphs import GraphRunner
from graphrun.graphs.verify import mismatch
from graphrun.refuse import refuse

log = logging.getLogger(__name__)

DEMO_BATCH_SIZES = (1, 3, 8, 32, 40)  # 3 pads to rung 4; 40 is above the top rung: counted eager fallback
MAX_BATCH_SIZE = 32
NUM_WARMUP_CALLS = 3
MODEL_SEED = 0
INPUT_SEED = 1


@dataclass(frozen=True, slots=True)
class DemoSetup:
    """Where and at what size the demo runs: a GPU gets the real model, a CPU a shrunken one."""

    backend: str  # "cuda" or "sim"
    device: torch.device
    dtype: torch.dtype
    num_layers: int
    hidden: int


@dataclass(frozen=True, slots=True)
class DemoRow:
    """One batch size: which rung served it, median times, and how far the graph's output is from eager."""

    batch_size: int
    rung: str  # the rung replayed, or "eager"
    eager_ms: float
    graph_ms: float
    max_abs_diff: float
    problem: str | None  # None when the output matches eager within the dtype tolerance

    @property
    def speedup(self) -> float:
        """Eager time over graph time (> 1 means the graph is faster)."""
        return self.eager_ms / self.graph_ms if self.graph_ms > 0 else float("inf")


def choose_setup(backend: str | None) -> DemoSetup:
    """cuda: 6 x 1024 fp16 on the GPU; sim: 4 x 256 fp32 on the CPU; None: cuda when a GPU is visible, else
    sim. (Not `auto`, which means no graphs without CUDA: the demo exists to show graphs, so on a CPU it
    names the simulator.)"""
    use_cuda = backend == "cuda" or (backend is None and torch.cuda.is_available())
    if not use_cuda:
        return DemoSetup("sim", torch.device("cpu"), torch.float32, num_layers=4, hidden=256)
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"--backend cuda needs a CUDA device and a CUDA build of torch (torch {torch.__version__} "
            "sees none); use --backend sim, or leave --backend out"
        )
    return DemoSetup("cuda", torch.device("cuda", torch.cuda.current_device()), torch.float16, 6, 1024)


def make_mlp(
    num_layers: int, hidden: int, device: torch.device, dtype: torch.dtype, seed: int
) -> torch.nn.Module:
    """Linear+GELU layers with seeded random weights (scaled 1/sqrt(hidden) so activations stay O(1))."""
    gen = torch.Generator().manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i in range(num_layers):
        linear = torch.nn.Linear(hidden, hidden)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(hidden, hidden, generator=gen) / hidden**0.5)
            linear.bias.copy_(torch.randn(hidden, generator=gen) * 0.1)
        layers.append(linear)
        if i < num_layers - 1:
            layers.append(torch.nn.GELU())
    model = torch.nn.Sequential(*layers).to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model


def random_input(setup: DemoSetup, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """A (batch_size, hidden) standard-normal input: never zeros, so timing and comparison mean something."""
    return torch.randn(batch_size, setup.hidden, generator=gen).to(device=setup.device, dtype=setup.dtype)


def median_ms(call: Callable[[], object], calls: int, sync: Callable[[], None]) -> float:
    """Median wall time of one call in ms, synchronising around each so queued device work is counted."""
    for _ in range(NUM_WARMUP_CALLS):
        call()
    times = []
    for _ in range(calls):
        sync()
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(
    runner: GraphRunner, model: torch.nn.Module, setup: DemoSetup, batch_size: int, calls: int
) -> DemoRow:
    """Compare one graph call with eager, then time both; the rung is what the runner actually did."""
    gen = torch.Generator().manual_seed(INPUT_SEED + batch_size)
    x = random_input(setup, batch_size, gen)
    want = model(x)
    replays_before = runner.stats.num_replayed
    got = runner(x).clone()  # the runner's output aliases its static buffers until the next call
    replayed = runner.stats.num_replayed > replays_before
    rung = runner.rung_for(batch_size) if replayed else None
    diff = float((got.double() - want.double()).abs().max())
    sync = runner.backend.synchronize
    eager_ms = median_ms(lambda: model(x), calls, sync)
    graph_ms = median_ms(lambda: runner(x), calls, sync)
    return DemoRow(batch_size, str(rung) if rung else "eager", eager_ms, graph_ms, diff, mismatch(got, want))


def run_demo(backend: str | None, calls: int) -> int:
    """Run the demo and print its report; 0 if every output matched eager, 1 if not, 2 on bad flags."""
    if calls < 1:
        return refuse("demo", f"--calls must be >= 1, got {calls}")
    try:
        setup = choose_setup(backend)
    except BackendUnavailableError as exc:
        return refuse("demo", exc)
    model = make_mlp(setup.num_layers, setup.hidden, setup.device, setup.dtype, MODEL_SEED)
    example = random_input(setup, 4, torch.Generator().manual_seed(INPUT_SEED))
    runner = GraphRunner(
        model,
        (example,),
        max_batch_size=MAX_BATCH_SIZE,
        backend=setup.backend,
        name="demo",
        registry=CollectorRegistry(),  # private: the demo serves no metrics, and reruns must not collide
    )
    rows = [measure(runner, model, setup, n, calls) for n in DEMO_BATCH_SIZES]
    for line in report_lines(setup, runner, rows, calls):
        print(line)
    return 0 if all(row.problem is None for row in rows) else 1


def report_lines(setup: DemoSetup, runner: GraphRunner, rows: list[DemoRow], calls: int) -> list[str]:
    """The table, the rung status lines and the fallback counters, as printed."""
    where = torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "CPU"
    lines = [
        f"graphrun demo: {setup.num_layers}-layer MLP, hidden {setup.hidden}, {_dtype_name(setup.dtype)} on "
        f"{where}, backend {setup.backend}, torch {torch.__version__}",
        f"ladder {list(runner.sizes)}; median of {calls} calls per cell, synchronised",
        f"{'batch':>5}  {'rung':>5}  {'eager ms':>9}  {'graph ms':>9}  {'speedup':>7}  "
        f"{'max diff':>9}  match",
    ]
    for r in rows:
        lines.append(
            f"{r.batch_size:>5}  {r.rung:>5}  {r.eager_ms:>9.3f}  {r.graph_ms:>9.3f}  {r.speedup:>6.2f}x  "
            f"{r.max_abs_diff:>9.2e}  {'ok' if r.problem is None else r.problem}"
        )
    if setup.backend == "sim":
        lines.append(
            "note: the sim backend reproduces graph semantics, not speed: the CPU speedup is not meaningful"
        )
    lines.extend(str(status) for status in runner.status())
    stats = runner.stats
    lines.append(f"replays: {stats.num_replayed}, padding ratio {stats.padding_ratio:.3f}")
    lines.append(f"eager fallbacks: {_counts(stats.eager_fallback)}")
    lines.append(f"capture failures: {_counts(stats.capture_failed)}")
    return lines


def _counts(counter: Mapping[Any, int]) -> str:
    return ", ".join(f"{reason}={n}" for reason, n in sorted(counter.items())) or "none"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
