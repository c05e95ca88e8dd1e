"""Decode-step projections at 1-16 rows: cuBLAS vs the skinny GEMV kernels (kernels/gemv.py), per shape.

Run on the GPU machine: `PYTHONPATH=src python3 benchmarks/skinny_gemv.py OUT_DIR [MODEL ...]`.
For each projection of the model (QKV, O, gate/up, down) and each row count, one CUDA graph holds the
product once per layer, each layer with its own random weights (so the L2 cache does not hold them, as
in a real step); a point is the median over 100 replays, timed with CUDA events, divided by the layer
count. GB/s counts the weight bytes once. Every GEMV configuration is checked against cuBLAS first
(relative error), and the gate/up product is also timed with its SiLU-multiply fused (gemv_silu_mul)
against cuBLAS followed by the silu_mul kernel. Writes skinny-gemv.json; prints a table per model.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import triton

from graphrun.bench.report import environment
from graphrun.llm.kernels import gemv as kernels
from graphrun.llm.kernels import triton_ops

SHAPES = {  # model -> (layers, {projection: (out features, in features)})
    "qwen3-0.6b-shape": (28, {"qkv": (4096, 1024), "o": (1024, 2048), "gate_up": (6144, 1024),
                              "down": (1024, 3072)}),
    "qwen3-8b-shape": (36, {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (24576, 4096),
                            "down": (4096, 12288)}),
}  # fmt: skip
ROWS = (1, 2, 4, 8)
CONFIGS = [(4, 256, 4), (4, 512, 4), (8, 256, 4), (8, 512, 8), (16, 128, 4), (16, 256, 8), (32, 128, 8),
           (2, 512, 2), (1, 1024, 4)]  # fmt: skip  (block_n, block_k, num_warps)
MAX_TILE = 8192  # rows x block_n x block_k elements held by one program


def chain_ms(calls: list[Callable[[], object]]) -> float:
    """Median ms of one graph replay running every call once (warmed up and captured first)."""
    for fn in calls:
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(100):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _linear_silu(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return triton_ops.silu_mul(torch.nn.functional.linear(x, w))


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def sweep(model: str) -> list[dict]:
    layers, shapes = SHAPES[model]
    rows_out = []
    for name, (n, k) in shapes.items():
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5 for _ in range(layers)]
        for m in ROWS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = torch.nn.functional.linear(x, weights[0])
            cublas = chain_ms([partial(torch.nn.functional.linear, x, w) for w in weights]) / layers
            row = {"model": model, "proj": name, "n": n, "k": k, "m": m, "cublas_us": cublas * 1e3}
            row["gemv"] = []
            if name == "gate_up":
                row["cublas_silu_us"] = 1e3 * chain_ms(
                    [partial(_linear_silu, x, w) for w in weights]
                ) / layers
            for bn, bk, warps in CONFIGS:
                if triton.next_power_of_2(m) * bn * bk > MAX_TILE or k % bk:
                    continue
                opts = {"block_n": bn, "block_k": bk, "num_warps": warps}
                err = rel_err(kernels.gemv(x, weights[0], **opts), ref)
                us = 1e3 * chain_ms([partial(kernels.gemv, x, w, **opts) for w in weights]) / layers
                point = {"block_n": bn, "block_k": bk, "num_warps": warps, "us": us, "rel_err": err}
                if name == "gate_up":
                    point["silu_us"] = 1e3 * chain_ms(
                        [partial(kernels.gemv_silu_mul, x, w, **opts) for w in weights]
                    ) / layers
                row["gemv"].append(point)
            best = min(row["gemv"], key=lambda p: p["us"])
            row["best"] = best
            gbs = n * k * 2 / (best["us"] * 1e-6) / 1e9
            print(
                f"{model:17s} {name:8s} {n:6d}x{k:<6d} m={m:2d}  cuBLAS {cublas * 1e3:7.2f} us  "
                f"GEMV {best['us']:7.2f} us ({gbs:5.0f} GB/s) bn={best['block_n']} bk={best['block_k']} "
                f"w={best['num_warps']} err={best['rel_err']:.1e}"
                + (
                    f"  | +silu: cuBLAS {row['cublas_silu_us']:7.2f} fused {best['silu_us']:7.2f} us"
                    if name == "gate_up"
                    else ""
                ),
                flush=True,
            )
            rows_out.append(row)
        del weights
    return rows_out


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out")
    models = sys.argv[2:] or list(SHAPES)
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for model in models:  # written after each model: a run stopped at its time limit keeps what it measured
        results += sweep(model)
        payload = {"benchmark": "skinny-gemv", **environment(), "rows": results}
        (out / "skinny-gemv.json").write_text(json.dumps(payload, indent=1))
