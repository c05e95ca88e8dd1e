"""The decode-sized LM head of qwen3-0.6b-shape on the GPU: skinny_logits (Triton) vs cuBLAS + cast.

Run on the GPU machine: `PYTHONPATH=src python3 benchmarks/skinny_gemm.py OUT_DIR`. Each point is the
median of 200 replays of one CUDA graph of 20 back-to-back calls (as the decode graph runs them), timed
with CUDA events, on random weights; GB/s counts the weight bytes once. Writes skinny-logits.json.
(An earlier version also timed the per-layer projections: cuBLAS won those, 4-7 us each in a graph.)
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

VOCAB, HIDDEN = 151936, 1024  # qwen3-0.6b-shape's LM head
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
    w = torch.randn(VOCAB, HIDDEN, device="cuda", dtype=torch.bfloat16) * 0.02
    for m in (1, 4, 16):
        x = torch.randn(m, HIDDEN, device="cuda", dtype=torch.bfloat16)
        skinny_fn = functools.partial(ops.skinny_logits, x, w)
        cublas_fn = functools.partial(lambda x, w: torch.nn.functional.linear(x, w).float(), x, w)
        same = torch.allclose(skinny_fn(), cublas_fn(), rtol=2e-2, atol=2e-2)
        t_ms, c_ms = graph_ms(skinny_fn), graph_ms(cublas_fn)
        gbs = w.numel() * 2 / (t_ms * 1e-3) / 1e9
        rows.append(
            {
                "m": m,
                "skinny_ms": t_ms,
                "cublas_ms": c_ms,
                "speedup": c_ms / t_ms,
                "skinny_gbs": gbs,
                "close": same,
            }
        )
        print(
            f"lm_head m={m:2d}  skinny_logits {t_ms * 1e3:7.1f} us ({gbs:6.0f} GB/s)  cuBLAS + cast "
            f"{c_ms * 1e3:7.1f} us  x{c_ms / t_ms:.2f}  close={same}"
        )
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "skinny-logits", **environment(), "vocab": VOCAB, "hidden": HIDDEN, "rows": rows}
    (out / "skinny-logits.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out"))
