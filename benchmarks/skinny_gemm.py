"""Decode-sized matmuls of qwen3-0.6b-shape on the GPU: skinny_matmul (Triton) vs cuBLAS, per shape and rows.

Run on the GPU machine: `PYTHONPATH=src python3 benchmarks/skinny_gemm.py OUT_DIR`. Each point is the
median of 200 calls timed with CUDA events inside one CUDA graph of 20 back-to-back calls (as the decode
graph runs them), on random weights; achieved GB/s counts the weight bytes once. Writes skinny-gemm.json.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
from pathlib import Path

import torch

from graphrun.bench.report import environment
from graphrun.llm.kernels import triton_ops as ops

SHAPES = {  # name -> (n, k, silu_mul)
    "qkv": (4096, 1024, False),
    "o_proj": (1024, 2048, False),
    "gate_up": (6144, 1024, False),
    "down+silu": (1024, 3072, True),
    "lm_head": (151936, 1024, False),
}
CALLS_PER_GRAPH = 20


def graph_ms(fn) -> float:
    """Median per-call ms of fn, captured CALLS_PER_GRAPH times in one graph, 200 replays."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS_PER_GRAPH):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(200):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / CALLS_PER_GRAPH)
    return statistics.median(times)


def main(out: Path) -> None:
    torch.manual_seed(0)
    rows = []
    for name, (n, k, silu) in SHAPES.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        for m in (1, 4, 16):
            x = torch.randn(m, 2 * k if silu else k, device="cuda", dtype=torch.bfloat16)
            triton_fn = functools.partial(ops.skinny_matmul, x, w, silu_mul=silu)
            act = functools.partial(ops.silu_mul, x) if silu else (lambda x=x: x)
            cublas_fn = functools.partial(lambda act, w: torch.nn.functional.linear(act(), w), act, w)
            same = torch.allclose(triton_fn().float(), cublas_fn().float(), rtol=2e-2, atol=2e-2)
            t_ms, c_ms = graph_ms(triton_fn), graph_ms(cublas_fn)
            gbs = w.numel() * 2 / (t_ms * 1e-3) / 1e9
            rows.append(
                {
                    "shape": name,
                    "n": n,
                    "k": k,
                    "m": m,
                    "skinny_ms": t_ms,
                    "cublas_ms": c_ms,
                    "speedup": c_ms / t_ms,
                    "skinny_gbs": gbs,
                    "close": same,
                }
            )
            print(
                f"{name:10s} m={m:2d}  skinny {t_ms * 1e3:7.1f} us ({gbs:6.0f} GB/s)  cuBLAS "
                f"{c_ms * 1e3:7.1f} us  x{c_ms / t_ms:.2f}  close={same}"
            )
    per_layer = {
        m: sum(r["skinny_ms"] for r in rows if r["m"] == m and r["shape"] != "lm_head") for m in (1, 4, 16)
    }
    cublas_layer = {
        m: sum(r["cublas_ms"] for r in rows if r["m"] == m and r["shape"] != "lm_head") for m in (1, 4, 16)
    }
    for m in (1, 4, 16):
        head = next(r for r in rows if r["m"] == m and r["shape"] == "lm_head")
        print(
            f"m={m}: 28 layers + lm_head: skinny {28 * per_layer[m] + head['skinny_ms']:.3f} ms, "
            f"cuBLAS (+silu_mul) {28 * cublas_layer[m] + head['cublas_ms']:.3f} ms"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "skinny-gemm.json").write_text(
        json.dumps({"benchmark": "skinny-gemm", **environment(), "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out"))
