"""`graphrun bench pipeline`: the example policy's stages and act(), CUDA graphs vs eager, in one run.

It answers issue 17's questions: how much faster act() is with both stages captured (mean), how steady
(p99 over p50, and the standard deviation as jitter, graph vs eager), how much of that win survives when
the prefix stage cannot capture (forced here through a memory budget of one byte, the tier-aware
fallback), what capture costs per stage (seconds, MiB), and how much later the first action comes when
start-up captures both stages than when it does not. Every call is timed alone, device synced before and
after (timing.py), the modes interleaved. Observations carry no id, so every act() runs the prefix. On a
machine without CUDA everything runs float32 on the sim backend: a smoke test, not a measurement.

--backend ort runs the same three pipelines on OrtRunner stages over the policy's exported .onnx files
(export time not counted): eager is ORT's eager session, graph its CUDA graphs (IOBinding without graphs on
the CPU), and prefix_eager switches the prefix to the eager session, since ORT has no memory budget to force
a real capture failure with. Outputs are checked within float16's tolerance: ORT's CUDA EP may run float32
matmuls in TF32.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from graphrun.bench.pipeline_report import CPU_NOTE, pipeline_payload, print_pipeline, save_pipeline
from graphrun.bench.report import written
from graphrun.bench.timing import release_memory, time_interleaved
from graphrun.errors import ConfigError
from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.verify import TOLERANCES, mismatch
from graphrun.ort.options import OrtOptions
from graphrun.pipeline.pipeline import Pipeline
from graphrun.pipeline.policy.config import ExamplePolicyConfig
from graphrun.pipeline.policy.example import ExamplePolicy, StageOptions
from graphrun.pipeline.policy.observation import Observation
from graphrun.refuse import refuse
from graphrun.stats import percentile

log = logging.getLogger(__name__)

SIM_ITERS = 20  # the sim backend's timings mean nothing: keep a CPU smoke run short
MIB = 2**20
# the three pipelines of a run: graphs off, both stages captured, the prefix forced to fail its capture
VARIANTS = ("eager", "graph", "prefix_eager")


@dataclass(frozen=True, slots=True)
class PipelineBenchSetup:
    """What the run measures and where, fixed once from the flags and validated here."""

    device: torch.device
    dtype: torch.dtype
    backend: str  # "cuda" or "sim"
    iters: int
    warmup: int
    config: ExamplePolicyConfig
    runtime: str = "torch"  # "torch": GraphRunner stages; "ort": OrtRunner stages over exported files

    def __post_init__(self) -> None:
        if self.iters < 2 or self.warmup < 0:
            raise ConfigError(f"--iters must be >= 2 and --warmup >= 0, got {self.iters} and {self.warmup}")
        if self.runtime == "ort":
            _check_ort(self.backend, self.dtype)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PipelineBenchSetup:
        """CUDA with --dtype when a device is visible, else the sim backend in float32, iterations capped."""
        cuda = torch.cuda.is_available()
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        dtype = getattr(torch, args.dtype) if cuda else torch.float32
        base = ExamplePolicyConfig.tiny() if args.small else ExamplePolicyConfig()
        if args.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {args.steps}")
        config = ExamplePolicyConfig(**{**asdict(base), "num_steps": args.steps, "batch_sizes": (1,)})
        iters, warmup = (
            (args.iters, args.warmup) if cuda else (min(args.iters, SIM_ITERS), min(args.warmup, 3))
        )
        return cls(device, dtype, "cuda" if cuda else "sim", iters, warmup, config, args.backend)

    def sync(self) -> None:
        """Wait for queued device work (nothing to wait for on the sim backend)."""
        if self.backend == "cuda":
            torch.cuda.synchronize(self.device)

    def options(self, variant: str) -> tuple[StageOptions, dict[str, StageOptions]]:
        """Both stages' runner options and the per-stage override of one variant."""
        if self.runtime == "ort":
            graphs = OrtOptions(backend="cuda_graph" if self.backend == "cuda" else "binding")
            eager = OrtOptions(backend="eager")
            ort: dict[str, tuple[StageOptions, dict[str, StageOptions]]] = {
                "eager": (eager, {}),
                "graph": (graphs, {}),
                "prefix_eager": (graphs, {"prefix": eager}),
            }
            return ort[variant]
        if variant == "eager":
            return RunnerOptions(backend=self.backend, mode="none"), {}
        base = RunnerOptions(backend=self.backend)
        if variant == "prefix_eager":  # a real capture failure: the stage's graph exceeds its budget
            return base, {"prefix": RunnerOptions(backend=self.backend, memory_budget_bytes=1)}
        return base, {}


def _check_ort(backend: str, dtype: torch.dtype) -> None:
    """--backend ort needs graphrun[onnx], onnxruntime-gpu on a GPU, and a dtype IOBinding has."""
    if any(importlib.util.find_spec(name) is None for name in ("onnxruntime", "onnxscript")):
        raise ConfigError("--backend ort needs the `onnx` extra: pip install 'graphrun[onnx]'")
    if dtype == torch.bfloat16:
        raise ConfigError("--backend ort runs float16 or float32 (IOBinding has no bfloat16): pass --dtype")
    from graphrun.ort.sessions import has_cuda_ep

    if backend == "cuda" and not has_cuda_ep():
        raise ConfigError("--backend ort on a GPU needs onnxruntime-gpu (this onnxruntime has no CUDA EP)")


def time_stats(times: list[float]) -> dict[str, float]:
    """Mean, p50, p99, std (jitter) and min of per-call seconds, in milliseconds."""
    ms = [t * 1e3 for t in times]
    return {
        "mean_ms": statistics.fmean(ms),
        "p50_ms": percentile(ms, 50) or 0.0,
        "p99_ms": percentile(ms, 99) or 0.0,
        "std_ms": statistics.stdev(ms),
        "min_ms": min(ms),
    }


def _start_pipeline(
    setup: PipelineBenchSetup, variant: str, onnx_folder: Path | None
) -> tuple[ExamplePolicy, Pipeline, float]:
    """Build the policy and its pipeline and answer one act(): seconds from nothing to the first action."""
    setup.sync()
    start = time.perf_counter()
    policy = ExamplePolicy(setup.config, device=setup.device, dtype=setup.dtype)
    options, per_stage = setup.options(variant)
    registry = CollectorRegistry()
    pipe = policy.pipeline(options, stage_options=per_stage, registry=registry, onnx_folder=onnx_folder)
    pipe.act(policy.observation(1, seed=1))
    setup.sync()
    return policy, pipe, time.perf_counter() - start


def _warm_device(setup: PipelineBenchSetup) -> None:
    """Initialise the CUDA context and every kernel's library (one eager act()) before anything is timed,
    so the start-up of whichever pipeline comes first does not pay for them."""
    policy = ExamplePolicy(setup.config, device=setup.device, dtype=setup.dtype)
    policy.act_eager(policy.observation(1, seed=0))
    setup.sync()


def _stage_fns(
    pipes: Mapping[str, Pipeline], obs: Observation, kv: torch.Tensor
) -> dict[str, dict[str, Callable[[], object]]]:
    """Per stage, eager and graph: the prefix on the observation, one expert step from its noise."""
    t = torch.full((1, 1), 0.5, device=kv.device, dtype=kv.dtype)
    prefix_args, expert_args = (obs.images, obs.tokens, obs.state), (kv, obs.noise, t)
    return {
        "prefix": {v: partial(pipes[v].call, "prefix", *prefix_args) for v in ("eager", "graph")},
        "expert": {v: partial(pipes[v].call, "expert", *expert_args) for v in ("eager", "graph")},
    }


def _correctness(
    policy: ExamplePolicy, pipes: Mapping[str, Pipeline], obs: Observation, runtime: str
) -> dict[str, Any]:
    """act() of every pipeline against the bare modules on one observation (same noise)."""
    want = policy.act_eager(obs)
    tolerance = TOLERANCES[torch.float16] if runtime == "ort" else None  # module docstring
    bad = {
        v: problem for v, p in pipes.items() if (problem := mismatch(p.act(obs), want, tolerance)) is not None
    }
    diffs = {v: float((p.act(obs).double() - want.double()).abs().max()) for v, p in pipes.items()}
    return {"outputs_match": not bad, "mismatch": bad, "max_abs_diff": diffs}


def _capture_rows(pipes: Mapping[str, Pipeline]) -> list[dict[str, Any]]:
    """Per pipeline and stage: tier, rungs captured, capture seconds and graph MiB, the failure reason."""
    return [
        {
            "pipeline": variant,
            "stage": r.stage,
            "tier": r.tier.value,
            "captured": f"{r.num_captured}/{r.num_rungs}",
            "capture_seconds": r.capture_seconds,
            "graph_mib": r.nbytes / MIB,
            "reason": r.reason.value if r.reason is not None else None,
        }
        for variant, pipe in pipes.items()
        for r in pipe.reports
    ]


def _started(
    setup: PipelineBenchSetup, variant: str, onnx_folder: Path | None, out: dict[str, Any]
) -> Pipeline:
    log.info("pipeline bench: starting the %s pipeline", variant)
    _, pipe, seconds = _start_pipeline(setup, variant, onnx_folder)
    out["startup_seconds"][variant] = seconds
    return pipe


def _measure(setup: PipelineBenchSetup, out: dict[str, Any]) -> None:
    """Start each pipeline, check them, time stages and act(); fills `out` as it goes."""
    _warm_device(setup)
    with tempfile.TemporaryDirectory(prefix="graphrun-bench-onnx-") as folder:
        if setup.runtime == "ort":
            log.info("pipeline bench: exporting both stages to ONNX (not timed)")
            ExamplePolicy(setup.config, device=setup.device, dtype=setup.dtype).export_onnx(folder)
        onnx_folder = Path(folder) if setup.runtime == "ort" else None
        pipes = {variant: _started(setup, variant, onnx_folder, out) for variant in VARIANTS}
    policy = ExamplePolicy(setup.config, device=setup.device, dtype=setup.dtype)
    out["capture"] = _capture_rows(pipes)
    obs = policy.observation(1, seed=2)
    out.update(_correctness(policy, pipes, obs, setup.runtime))
    with torch.inference_mode():
        kv = pipes["eager"].call("prefix", obs.images, obs.tokens, obs.state).clone()
        for stage, fns in _stage_fns(pipes, obs, kv).items():
            log.info("pipeline bench: timing the %s stage, %d calls per mode", stage, setup.iters)
            times = time_interleaved(fns, setup.iters, setup.warmup, setup.sync)
            out["stages"][stage] = {mode: time_stats(t) for mode, t in times.items()}
        log.info("pipeline bench: timing act(), %d calls per pipeline", setup.iters)
        acts: dict[str, Callable[[], object]] = {v: partial(p.act, obs) for v, p in pipes.items()}
        times = time_interleaved(acts, setup.iters, setup.warmup, setup.sync)
        out["act"] = {v: time_stats(t) for v, t in times.items()}
    for pipe in pipes.values():
        pipe.close()
    release_memory()


def run_bench_pipeline(args: argparse.Namespace) -> int:
    """Run `graphrun bench pipeline`; exit status 1 when an output differed from eager, a stage that should
    capture did not, or the run failed part-way (what it measured until then is still printed and written);
    2 for a bad flag."""
    try:
        setup = PipelineBenchSetup.from_args(args)
    except ConfigError as exc:
        return refuse("bench pipeline", exc)
    if setup.backend == "sim":
        print(f"{CPU_NOTE} (float32 forced, --dtype ignored, {setup.iters} iters, {setup.warmup} warmup)")
    measured: dict[str, Any] = {"startup_seconds": {}, "stages": {}, "act": {}, "capture": []}
    error = None
    try:
        _measure(setup, measured)
    except Exception as exc:  # keep what was measured before the failure
        log.exception("pipeline bench: the run failed; writing what it measured")
        error = f"{type(exc).__name__}: {exc}"
    dtype = str(setup.dtype).removeprefix("torch.")
    payload = pipeline_payload(
        measured, setup.backend, dtype, asdict(setup.config), setup.iters, setup.warmup, error, setup.runtime
    )
    print_pipeline(payload)
    log.info("pipeline bench: wrote %s", written(*save_pipeline(payload, Path(args.out))))
    return 0 if payload["ok"] else 1
