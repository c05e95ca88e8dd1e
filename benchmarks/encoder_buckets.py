"""BERT-large-shaped encoder served with batch x length buckets vs eager, one request at a time.

The issue's target: >= 3x eager at concurrency 1 with short inputs on an H200. A short input is where
eager is launch-bound: 24 layers of ~10 kernels each, every one a Python dispatch, for a few tokens of
work. The BucketedRunner pads the length to its bucket (and the batch to its rung), replays one graph and
slices back; eager runs the model on the request's own tensors (no padding at all), so the comparison
charges the graphs every cost they add (pad, mask, copy-in, padded positions computed).

Each input length is timed at batch 1 (one request), eager and bucketed interleaved in rounds, every call
alone between device syncs (host timing: the latency a request sees). Outputs are checked against eager.

    PYTHONPATH=src python benchmarks/encoder_buckets.py --out benchmarks/results        # GPU
    PYTHONPATH=src python benchmarks/encoder_buckets.py --small --iters 5               # CPU smoke

Served over HTTP, the same model and ladder is graphrun.bench.encoder_factory:bert_large: run
`graphrun serve --module graphrun.bench.encoder_factory:bert_large` and again with --enforce-eager, and
send each one short request at a time (`graphrun bench infer` at concurrency 1); the ratio of their
latencies is the target measured with the HTTP, codec and batcher costs both servers pay.

Prints a table, the target, then one JSON line; --out writes encoder-buckets-<device>.json (device,
torch, date, commit, the ladder, capture seconds, per length: bucket, medians, speedup, max difference).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from graphrun.bench.models import masked_encoder
from graphrun.bench.report import (
    emit,
    environment,
    goal,
    headline,
    print_goals,
    print_table,
)
from graphrun.bench.timing import summarize, time_interleaved
from graphrun.graphs import BucketDim, BucketedRunner, BucketOptions
from graphrun.graphs.options import RunnerOptions

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
TARGET_SPEEDUP = 3.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", default="16,32,64,128", help="length rungs (the buckets)")
    p.add_argument("--batch-sizes", default="1,2,4,8", help="batch rungs per bucket")
    p.add_argument("--input-lengths", default="5,12,16,24,40", help="request lengths timed (short inputs)")
    p.add_argument("--iters", type=int, default=200, help="timed calls per mode and length")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    p.add_argument("--small", action="store_true", help="2 layers, hidden 64 (CPU smoke)")
    p.add_argument("--out", default=None, help="folder for encoder-buckets-<device>.json")
    return p.parse_args()


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",") if s.strip())


def request(length: int, vocab: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """One request: token ids (1, length) and its mask of ones."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (1, length), generator=gen).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def build(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, BucketedRunner, float]:
    dtype = DTYPES[args.dtype] if device.type == "cuda" else torch.float32
    model = masked_encoder(args.small).to(device=device, dtype=dtype).eval().requires_grad_(False)
    lengths, batches = ints(args.lengths), ints(args.batch_sizes)
    dim = BucketDim("length", {"input_ids": 1, "attention_mask": 1}, lengths, pad_value=0)
    options = BucketOptions(
        (dim,), mask="attention_mask", max_graphs=len(lengths) * len(batches),
        runner=RunnerOptions(sizes=batches, backend="auto"), name="bert-large-buckets",
    )  # fmt: skip
    vocab = model.tokens.num_embeddings
    start = time.perf_counter()
    runner = BucketedRunner(model, request(lengths[0], vocab, device, 0), options)
    return model, runner, time.perf_counter() - start


def max_diff(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    return max(float((got[k].float() - want[k].float()).abs().max()) for k in want)


def measure(args: argparse.Namespace, model: Any, runner: BucketedRunner, device: torch.device) -> list[dict]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    vocab = model.tokens.num_embeddings
    rows = []
    for length in ints(args.input_lengths):
        inputs = request(length, vocab, device, length)
        with torch.no_grad():
            want = model(**inputs)
            times = time_interleaved(
                {"eager": lambda x=inputs: model(**x), "buckets": lambda x=inputs: runner(**x)},
                args.iters, args.warmup, sync,
            )  # fmt: skip
        eager, graphs = summarize(times["eager"]), summarize(times["buckets"])
        bucket = runner.bucket_of({name: tuple(t.shape) for name, t in inputs.items()})
        rows.append({
            "length": length, "bucket": bucket.sizes[0] if bucket else None,
            "eager_ms": eager["median_ms"], "buckets_ms": graphs["median_ms"],
            "buckets_p99_ms": graphs["p99_ms"], "speedup": eager["median_ms"] / graphs["median_ms"],
            "max_diff": max_diff(runner(**inputs), want),
        })  # fmt: skip
    return rows


def main() -> int:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, runner, capture_s = build(args, device)
    print(runner.status())
    rows = measure(args, model, runner, device)
    env = environment()
    print(headline(env))
    print_table(rows, ("length", "bucket", "eager_ms", "buckets_ms", "buckets_p99_ms", "speedup", "max_diff"))
    least = min(r["speedup"] for r in rows)
    goals = [goal("buckets vs eager, concurrency 1, short inputs (least)", least, ">=", TARGET_SPEEDUP, "x",
                  valid=device.type == "cuda" and not args.small)]  # fmt: skip
    print_goals(goals)
    payload = {
        "benchmark": "encoder_buckets", **env, "model": "bert-large-shape" if not args.small else "small",
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "lengths": ints(args.lengths), "batch_sizes": ints(args.batch_sizes),
        "num_graphs": runner.num_graphs, "capture_s": capture_s, "iters": args.iters, "rows": rows,
        "goals": goals, "exact_only_buckets": [b.sizes for b in runner.status().buckets if b.exact_dims],
    }  # fmt: skip
    emit(payload, args.out, "encoder-buckets")
    return 0 if all(g["met"] for g in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
