"""Where `bench zoo`'s "runner overhead over bare replay" goes on a GPU, one step at a time (needs CUDA).

The zoo compares runner(x) with a bare replay of a hand-made graph. Between the two sit, in order:
1. the output copy inside the runner's graph: every rung's graph ends by copying the callable's outputs
   into one shared set of static outputs (outputs.py), one more kernel per output in each replay;
2. the NVTX range around each replay (backends/cuda.py);
3. the runner's Python before and after the launch (measured without a GPU by runner_overhead.py);
4. the input copy, which the hand-written copy + replay pays too.
Each step is timed as a graph of its own, interleaved with the others and the device synced around
every call (graphrun.bench.timing, as the zoo times), so consecutive rows differ by one step:

    raw_replay              model(static_x) captured by hand, replayed
    raw_replay_out_copy     the same plus the output copy the runner records        -> step 1
    backend_replay          that body captured by CudaBackend: NVTX-wrapped replay  -> step 2
    runner_zero_copy        the runner called on its own static input rows          -> step 3
    raw_copy_replay         static_x.copy_(x), then raw_replay                      (the zoo's baseline)
    runner                  runner(x)                                               -> step 4 vs zero-copy

    PYTHONPATH=src python benchmarks/runner_gpu_breakdown.py [--model mlp] [--batch 1] [--iters 2000]
        [--out FILE.json]

Prints a table, then one JSON line; --out also writes the JSON (with device, torch and commit).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from graphrun.bench.models import MODEL_NAMES, build
from graphrun.bench.report import environment, print_table, write_json
from graphrun.bench.timing import summarize, time_interleaved
from graphrun.graphs import GraphRunner
from graphrun.graphs.backends.cuda import CudaBackend, RawGraph

ORDER = (
    "raw_replay",
    "raw_replay_out_copy",
    "backend_replay",
    "runner_zero_copy",
    "raw_copy_replay",
    "runner",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=MODEL_NAMES)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("runner_gpu_breakdown needs a CUDA device (runner_overhead.py runs on the CPU)")
    with torch.inference_mode():
        rows, extra = _measure(args)
    print_table(rows, ["mode", "median_us", "p99_us", "step_us"])
    payload = {"benchmark": "runner_gpu_breakdown", **environment(), **extra, "results": rows}
    if args.out:
        write_json(Path(args.out), payload)
    print(json.dumps(payload))


def _measure(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    model, make_input = build(args.model, False, getattr(torch, args.dtype), "cuda")
    example, x = make_input(args.batch), make_input(args.batch)
    static_x = example.clone()
    static_out = model(static_x).clone()

    def with_out_copy() -> None:
        static_out.copy_(model(static_x))

    raw = RawGraph(lambda: model(static_x))
    raw_out = RawGraph(with_out_copy)
    backend = CudaBackend()
    backend.warmup(with_out_copy, 2)
    wrapped = backend.capture(with_out_copy, "graphrun.replay[breakdown]")
    runner = GraphRunner(
        model, (example,), sizes=[args.batch], name="breakdown", registry=CollectorRegistry()
    )
    assert all(s.captured for s in runner.status()), str(runner.status())
    zero_args, zero_kwargs = runner.static_inputs(args.batch)

    def copy_replay() -> None:
        static_x.copy_(x)
        raw.replay()

    fns = {
        "raw_replay": raw.replay,
        "raw_replay_out_copy": raw_out.replay,
        "backend_replay": wrapped.replay,
        "runner_zero_copy": lambda: runner(*zero_args, **zero_kwargs),
        "raw_copy_replay": copy_replay,
        "runner": lambda: runner(x),
    }
    times = time_interleaved(fns, args.iters, args.warmup, torch.cuda.synchronize)
    med = {mode: summarize(t) for mode, t in times.items()}
    rows: list[dict[str, Any]] = []
    for i, mode in enumerate(ORDER):
        before = ORDER[i - 1] if mode not in ("raw_replay", "raw_copy_replay") else None
        if mode == "runner":
            before = "runner_zero_copy"
        step = med[mode]["median_ms"] - med[before]["median_ms"] if before else None
        rows.append(
            {
                "mode": mode,
                "median_us": med[mode]["median_ms"] * 1e3,
                "p99_us": med[mode]["p99_ms"] * 1e3,
                "step_us": step * 1e3 if step is not None else None,
            }
        )
    extra = {
        "model": args.model,
        "batch": args.batch,
        "dtype": args.dtype,
        "iters": args.iters,
        "overhead_us_vs_replay": (med["runner"]["median_ms"] - med["raw_replay"]["median_ms"]) * 1e3,
        "speedup_ratio": med["raw_copy_replay"]["median_ms"] / med["runner"]["median_ms"],
        "runner_replayed": runner.stats.num_replayed,
    }
    return rows, extra


if __name__ == "__main__":
    main()
