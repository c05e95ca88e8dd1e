"""Compile seconds at a first and a second start-up, with `compile_cache_dir` (issue 15 item 4).

Target: the second start-up spends <= 10% of the first one's compile seconds. Each start-up is a fresh
process with its own, empty TORCHINDUCTOR_CACHE_DIR, so the second one can only be faster through the
artifacts graphrun stored in the shared cache folder (inductor's own per-user cache is not reused).
Per case the child builds the runner(s) with compile=True and reports, per runner, the compiler used
(aot_inductor, or torch_compile with the reason AOTInductor refused), the compile outcome, seconds and
cache use, the capture seconds, the seconds a hash of the weights would cost (what a cache keyed by
weight values would pay at every start-up; graphrun binds the live weights instead), and on CUDA the
replay time of one call at the top rung against an uncompiled runner of the same model (CUDA events,
median of 200, after warm-up).

--designs compares the two designs: `aot` is graphrun's compile=True (AOTInductor first); `dynamo` is
the torch.compile design it replaced (AOTInductor skipped, torch's mega-cache), kept here to measure.

    PYTHONPATH=src python benchmarks/compile_cache.py [--cases encoder,mlp,engine] [--designs aot,dynamo]
        [--out DIR]

Prints a table, then one JSON line; --out writes compile-cache-<device>.json there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CASES = ("mlp", "encoder", "engine")
DESIGNS = ("aot", "dynamo")
SIZES = (1, 2, 4, 8, 16)


def child(case: str, cache_dir: str, variant: str, design: str) -> dict[str, Any]:
    """One start-up: build, compile (and capture) the case; what each runner reports."""
    import torch

    if variant == "threads1":  # experiment: no inductor compile-worker pool (its start-up is per process)
        torch._inductor.config.compile_threads = 1
    if design == "dynamo":  # the replaced design: torch.compile only, as if AOTInductor always refused
        from graphrun.graphs.compile import CompiledFn

        CompiledFn._try_aot = lambda *_args: (None, "benchmark: the torch.compile design")  # type: ignore[method-assign]

    from graphrun import GraphRunner
    from graphrun.bench.models import build

    if case == "engine":
        from graphrun.llm.engine import LLMEngine
        from graphrun.llm.engine_config import EngineConfig

        engine = LLMEngine(
            EngineConfig(
                model="qwen3-0.6b-shape", max_num_seqs=16, max_model_len=1024, compile=True,
                compile_cache_dir=cache_dir, cuda_graph_max_prefill_tokens=0,
            )
        )  # fmt: skip
        assert engine.decode_graphs is not None
        return {name: _runner_row(r) for name, r in engine.decode_graphs.runners.items()}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    module, make_input = build(case, small=device == "cpu", dtype=dtype, device=device)
    example = make_input(SIZES[-1])
    # on a machine without CUDA the simulator stands in for CUDA graphs (compile still runs inductor)
    common = {"sizes": list(SIZES), "name": case, "backend": "auto" if device == "cuda" else "sim"}
    compiled = GraphRunner(module, (example,), compile=True, compile_cache_dir=cache_dir, **common)
    row = _runner_row(compiled)
    row["weight_hash_s"], row["weight_mib"] = _hash_seconds(module)
    if device == "cuda":
        plain = GraphRunner(module, (example,), **{**common, "name": f"{case}-plain"})
        x = make_input(SIZES[-1])
        row["replay_ms_compiled"] = _replay_ms(compiled, x)
        row["replay_ms_plain"] = _replay_ms(plain, x)
        row["max_abs_diff"] = float((compiled(x).float() - module(x).float()).abs().max())
    return {case: row}


def _hash_seconds(module: Any) -> tuple[float, float]:
    """Seconds to hash every weight's bytes (to the host, then sha256), and the MiB hashed."""
    import hashlib
    import time

    import torch

    start, digest, nbytes = time.perf_counter(), hashlib.sha256(), 0
    for tensor in module.state_dict().values():
        data = tensor.detach().contiguous().view(torch.uint8).cpu().numpy()
        digest.update(data.tobytes())
        nbytes += data.size
    return round(time.perf_counter() - start, 4), round(nbytes / 2**20, 2)


def _runner_row(runner: Any) -> dict[str, Any]:
    status = runner.status()
    report = status.compile
    return {
        "backend": report.backend.value if report else "none",
        "aot_refused": report.aot_refused if report else "",
        "outcome": report.outcome.value if report else "none",
        "compile_s": round(report.seconds, 3) if report else 0.0,
        "cache": report.cache.value if report else "off",
        "detail": report.detail if report else "",
        "capture_s": round(runner.stats.capture_seconds, 3),
        "captured": sum(s.captured for s in status),
    }


def _replay_ms(runner: Any, x: Any) -> float:
    import torch

    for _ in range(20):
        runner(x)
    times = []
    for _ in range(200):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        runner(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return round(times[len(times) // 2], 4)


def start_up(case: str, cache_dir: Path, inductor_dir: Path, variant: str, design: str) -> dict[str, Any]:
    """Run one start-up of `case` in a fresh process; its report."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(inductor_dir))
    command = [sys.executable, __file__, "--child", case, "--cache-dir", str(cache_dir), "--variant", variant]
    done = subprocess.run(
        [*command, "--designs", design], capture_output=True, text=True, env=env, timeout=1200
    )
    if done.returncode != 0:
        return {case: {"outcome": "crashed", "detail": done.stderr.strip().splitlines()[-1:]}}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _two_start_ups(case: str, design: str, tmp: Path, variant: str) -> list[dict[str, Any]]:
    """A first and a second start-up of `case` sharing one cache folder; a row per runner."""
    cache = tmp / f"cache-{case}"
    first = start_up(case, cache, tmp / f"inductor-{case}-1", variant, design)
    second = start_up(case, cache, tmp / f"inductor-{case}-2", variant, design)
    rows = []
    for runner, one in first.items():
        two = second.get(runner, {})
        ratio = two.get("compile_s", 0) / one["compile_s"] if one.get("compile_s") else None
        rows.append(
            {"design": design, "runner": runner, "first": one, "second": two, "second_over_first": ratio}
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--designs", default="aot", help="aot (graphrun's compile=True), dynamo, or both")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--variant", default="default", choices=("default", "threads1"),
        help="experiment: threads1 sets inductor's compile_threads to 1 in both start-ups",
    )  # fmt: skip
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.cache_dir, args.variant, args.designs)))
        return 0
    from graphrun.bench.report import device_slug, environment, headline, print_table, write_json

    env = environment()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for design in args.designs.split(","):
            for case in args.cases.split(","):
                rows += _two_start_ups(case, design, Path(tmp) / design, args.variant)
    print(headline(env))
    table = [
        {
            "design": r["design"],
            "runner": r["runner"],
            "backend 1/2": f"{r['first'].get('backend')}/{r['second'].get('backend')}",
            "outcome 1/2": f"{r['first'].get('outcome')}/{r['second'].get('outcome')}",
            "cache 2": r["second"].get("cache"),
            "compile s 1": r["first"].get("compile_s"),
            "compile s 2": r["second"].get("compile_s"),
            "2/1": None if r["second_over_first"] is None else round(r["second_over_first"], 3),
            "capture s": r["first"].get("capture_s"),
            "replay ms compiled": r["first"].get("replay_ms_compiled"),
            "replay ms plain": r["first"].get("replay_ms_plain"),
            "hash s": r["first"].get("weight_hash_s"),
            "MiB": r["first"].get("weight_mib"),
        }
        for r in rows
    ]
    print_table(table, list(table[0]) if table else ["runner"])
    payload = {
        "benchmark": "compile_cache",
        "variant": args.variant,
        "designs": args.designs.split(","),
        "env": env,
        "target_second_over_first": 0.10,
        "rows": rows,
    }
    if args.out:
        suffix = "" if args.variant == "default" else f"-{args.variant}"
        write_json(Path(args.out) / f"compile-cache-{device_slug(env['device'])}{suffix}.json", payload)
    print(json.dumps(payload, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
