"""A decode step's logprobs inside a CUDA graph: the torch path vs the pruned Triton kernels (issue 20).

The decode graph of kind "logprobs" costs its sampling graph plus LogprobBuffers.write_prefix. Before the
Triton kernels it was the torch path: a float32 log-softmax over the whole vocabulary, torch.topk(20) on
it, a gather, a cat and two copies (compute_logprobs). Measured on an H100
(benchmarks/results/decode-profile-nvidia-h100-80gb-hbm3.json, replay_by_kind, qwen3-0.6b-shape) that
kind cost +0.109 ms at batch 1 (+8.5%) and +0.266 ms at batch 64 (+5.3%) over sampling; the target is
<= 5%. This A/B chose the writer that ships: on an H100
(benchmarks/results/experiments/logprobs-ab-nvidia-h100-80gb-hbm3.json) the pruned kernels beat the torch
path and an earlier fused writer that sorted every chunk (deleted since; 27.4 us at bf16 batch 1, 188.9
at 64, against pruned_1024's 20.4 and 29.2) at every batch, so write_prefix runs pruned_logprobs with
1024 logits per chunk (kernels.logprobs.DEFAULT_BLOCK). Variants, each written into its own
LogprobBuffers as the engine would:
- torch: compute_logprobs (llm/logprobs.py) and the two copies into the buffers, the torch path;
- torch_lse: torch reformulated: logsumexp of the logits, topk on the raw logits, both minus the lse
  (no (rows, vocab) log-softmax written);
- pruned_B: kernels/logprobs.py's three launches (chunk stats, top-k candidates of the k chunks with the
  largest maxima only, merge) with B logits per chunk, for each --blocks B.
Each variant is captured alone in a CUDA graph per (dtype, batch); before every replay fresh logits (one
of a few random sets) are copied into the graph's static input, outside the timed region; variants are
replayed in interleaved rounds, each replay between two CUDA events; a point is the median in us. Before
timing, each variant's output is checked eagerly against compute_logprobs (values' max abs difference,
ids that differ on untied values). The goal lines compare the shipped block's cost with 5% of the
sampling step (--sampling-step-ms, default the H100 figures above: pass the device's own).

    PYTHONPATH=src python3 benchmarks/logprobs_ab.py --out OUT                     # GPU
    TRITON_INTERPRET=1 PYTHONPATH=src python3 benchmarks/logprobs_ab.py --check-only --vocab 700 \
        --batch-sizes 1,3 --blocks 32,256                                           # CPU: checks only
(with --vocab 700, blocks of 32 make 22 chunks, more than k, so the kernels prune; blocks of 256 make 3,
so every chunk is a candidate set).

Prints a table, the goals, then one JSON line; --out writes logprobs-ab-<device>.json (device, torch,
date, commit, settings, rows, checks, goals).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

import torch

from graphrun.bench.report import (
    emit,
    environment,
    goal,
    headline,
    print_goals,
    print_table,
)
from graphrun.bench.timing import graph_replay_medians
from graphrun.llm.kernels.logprobs import DEFAULT_BLOCK, pruned_logprobs
from graphrun.llm.logprobs import LogprobBuffers, compute_logprobs

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
NUM_INPUTS = 4  # distinct random logits sets, cycled through the replays
Step = Callable[[torch.Tensor, torch.Tensor], None]  # (logits, tokens) -> its buffers written
Inputs = list[tuple[torch.Tensor, torch.Tensor]]  # (logits, tokens) sets
Variants = dict[str, tuple[Step, LogprobBuffers]]
SHIPPED = f"pruned_{DEFAULT_BLOCK}"  # the variant LogprobBuffers runs


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary (qwen3's by default)")
    p.add_argument("--batch-sizes", default="1,4,16,64")
    p.add_argument("--dtypes", default="float32,bfloat16", help="logits dtypes (the engine's are float32)")
    p.add_argument("--blocks", default="512,1024,2048,4096", help="logits per chunk, pruned_B variants")
    p.add_argument("--iters", type=int, default=300, help="timed replays per variant and point")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--sampling-step-ms", default="1:1.281,64:5.036", help="batch:ms of the sampling step")
    p.add_argument("--check-only", action="store_true", help="check the variants, time nothing (CPU)")
    p.add_argument("--out", default=None, help="folder for logprobs-ab-<device>.json")
    return p.parse_args()


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def torch_lse(buffers: LogprobBuffers) -> Step:
    """The torch reformulation: logsumexp and topk on the raw logits, no log-softmax written."""

    def step(logits: torch.Tensor, tokens: torch.Tensor) -> None:
        n = logits.shape[0]
        lse = torch.logsumexp(logits.float(), dim=-1, keepdim=True)
        top_values, top_ids = logits.topk(buffers.k, dim=-1)
        sampled = logits.gather(1, tokens[:, None]).float()
        buffers.values[:n].copy_(torch.cat([sampled, top_values.float()], dim=1) - lse)
        buffers.top_ids[:n].copy_(top_ids)

    return step


def torch_path(buffers: LogprobBuffers) -> Step:
    """The torch path: compute_logprobs, then the copies into the buffers' first rows."""

    def step(logits: torch.Tensor, tokens: torch.Tensor) -> None:
        values, ids = compute_logprobs(logits, tokens, buffers.k)
        buffers.values[: values.shape[0]].copy_(values)
        buffers.top_ids[: ids.shape[0]].copy_(ids)

    return step


def kernel(buffers: LogprobBuffers, name: str) -> Step:
    """The Triton variant `name` ("pruned_1024"): pruned_logprobs with that block."""
    block = int(name.rsplit("_", 1)[1])

    def step(logits: torch.Tensor, tokens: torch.Tensor) -> None:
        n = logits.shape[0]
        pruned_logprobs(logits, tokens, buffers.values[:n], buffers.top_ids[:n], block=block)

    return step


def variant_names(args: argparse.Namespace) -> list[str]:
    return ["torch", "torch_lse", *(f"pruned_{b}" for b in ints(args.blocks))]


def variants(n: int, vocab: int, names: list[str], device: torch.device) -> Variants:
    """Each variant with the buffers it writes (one set per variant, n rows)."""
    out: Variants = {}
    for name in names:
        buffers = LogprobBuffers(n, vocab, device)
        step = (
            torch_path(buffers)
            if name == "torch"
            else torch_lse(buffers)
            if name == "torch_lse"
            else kernel(buffers, name)
        )
        out[name] = (step, buffers)
    return out


def inputs(n: int, vocab: int, dtype: torch.dtype, device: torch.device) -> Inputs:
    """NUM_INPUTS (logits, tokens) sets: logits of a few scales, tokens anywhere (first and last id too)."""
    gen = torch.Generator(device="cpu").manual_seed(n * 7 + vocab)
    sets = []
    for i in range(NUM_INPUTS):
        logits = torch.randn(n, vocab, generator=gen) * (2.0 + i)
        tokens = torch.randint(0, vocab, (n,), generator=gen)
        tokens[0] = 0 if i % 2 else vocab - 1
        sets.append((logits.to(device, dtype), tokens.to(device)))
    return sets


def check(step: Step, buffers: LogprobBuffers, sets: Inputs) -> dict[str, Any]:
    """A variant's output against compute_logprobs on every input set, run eagerly."""
    worst, untied_mismatch = 0.0, 0
    for logits, tokens in sets:
        step(logits, tokens)
        values, ids = buffers.prefix(logits.shape[0])
        want_values, want_ids = compute_logprobs(logits, tokens, buffers.k)
        finite = torch.isfinite(want_values)
        worst = max(worst, float((values - want_values)[finite].abs().max()))
        differ = ids != want_ids
        tied = logits.gather(1, ids) == logits.gather(1, want_ids)
        untied_mismatch += int((differ & ~tied).sum())
    return {"max_abs_diff": worst, "untied_id_mismatches": untied_mismatch}


def time_variants(steps: Variants, sets: Inputs, args: argparse.Namespace) -> dict[str, float]:
    """Median us per variant: each captured alone, replayed in interleaved rounds on fresh inputs."""
    logits, tokens = (t.clone() for t in sets[0])  # the graphs' static inputs

    def stage(r: int) -> None:
        logits.copy_(sets[r % len(sets)][0])
        tokens.copy_(sets[r % len(sets)][1])

    bodies = {name: functools.partial(step, logits, tokens) for name, (step, _) in steps.items()}
    return graph_replay_medians(bodies, stage, args.iters, args.warmup)


def measure(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], list[dict]]:
    rows, checks = [], []
    names = variant_names(args)
    for dtype_name in args.dtypes.split(","):
        for n in ints(args.batch_sizes):
            sets = inputs(n, args.vocab, DTYPES[dtype_name], device)
            steps = variants(n, args.vocab, names, device)
            for name, (step, buffers) in steps.items():
                point = {"dtype": dtype_name, "batch": n, "variant": name}
                checks.append({**point, **check(step, buffers, sets)})
            if args.check_only:
                continue
            us = time_variants(steps, sets, args)
            rows.append(
                {"dtype": dtype_name, "batch": n, **{f"{k}_us": v for k, v in us.items()}, **ratios(us)}
            )
            print(f"{dtype_name} batch {n}: " + ", ".join(f"{k} {v:.1f} us" for k, v in us.items()))
    return rows, checks


def ratios(us: dict[str, float]) -> dict[str, Any]:
    """The best pruned block, its time and the shipped block's over torch's."""
    out: dict[str, Any] = {"torch_lse_over_torch": us["torch_lse"] / us["torch"]}
    names = [name for name in us if name.startswith("pruned_")]
    if names:
        out["best_pruned"] = min(names, key=us.__getitem__)
        out["pruned_over_torch"] = us[out["best_pruned"]] / us["torch"]
    if SHIPPED in us:
        out["shipped_over_torch"] = us[SHIPPED] / us["torch"]
    return out


def goals_for(rows: list[dict], args: argparse.Namespace, valid: bool) -> list[dict]:
    """Per batch with a sampling-step figure: the shipped variant's float32 cost vs 5% of that step."""
    step_ms = dict(pair.split(":") for pair in args.sampling_step_ms.split(",") if pair)
    goals = []
    for row in rows:
        ms = step_ms.get(str(row["batch"]))
        if row["dtype"] != "float32" or ms is None or f"{SHIPPED}_us" not in row:
            continue
        name = f"logprobs ({SHIPPED}, shipped), float32, batch {row['batch']} (5% of a {ms} ms step)"
        goals.append(goal(name, row[f"{SHIPPED}_us"], "<=", 0.05 * float(ms) * 1e3, " us", valid=valid))
    return goals


def main() -> int:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.check_only:
        print("logprobs_ab times CUDA graphs: run it on a GPU, or --check-only (TRITON_INTERPRET=1)")
        return 2
    rows, checks = measure(args, device)
    env = environment()
    print(headline(env))
    print_table(checks, ("dtype", "batch", "variant", "max_abs_diff", "untied_id_mismatches"))
    ok = all(c["max_abs_diff"] < 1e-3 and c["untied_id_mismatches"] == 0 for c in checks)
    goals = goals_for(rows, args, valid=ok)
    if rows:
        kernel_columns = [f"{name}_us" for name in variant_names(args)[2:]]
        print_table(rows, ("dtype", "batch", "torch_us", "torch_lse_us", *kernel_columns, "best_pruned",
                           "pruned_over_torch", "shipped_over_torch", "torch_lse_over_torch"))  # fmt: skip
        print_goals(goals)
    payload = {"benchmark": "logprobs_ab", **env, "vocab": args.vocab, "iters": args.iters,
               "warmup": args.warmup, "blocks": ints(args.blocks),
               "ok": ok, "rows": rows, "checks": checks,
               "goals": goals}  # fmt: skip
    emit(payload, args.out, "logprobs-ab")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
