"""In-graph sampling inside a CUDA graph: sort_sample (a sort of the whole vocabulary) vs the fused Triton
kernels (issue 18). This A/B decided that the engine samples through the fused kernels on CUDA
(llm/sampler.py's sample) at kernels.sampling_block's block sizes.

On an H200 (benchmarks/results/decode-profile-nvidia-h200.json, replay_by_kind, commit 20dd9f8,
qwen3-0.6b-shape) the sampling decode graph took 1.177 ms against the greedy graph's 0.957 at batch 1
and 4.206 against 2.155 at batch 64: sample was about half the step at 64 rows. Variants, each
captured alone in a CUDA graph per (logits kind, mix, batch):
- greedy: greedy_sample, one argmax: reading the logits once, the floor of any sampler;
- torch: sort_sample (llm/sampler.py), the engine's path before this A/B, now the CPU path;
- fused_B: kernels/sampling.py's two launches with B logits per split program, for each --blocks B.
Mixes, every row alike (seeds and positions differ per row): temperature (T 0.8), top_p (T 0.8,
top-p 0.9), top_k (T 0.8, top-k 50), both (T 0.8, top-k 50, top-p 0.9). Logits kinds, float32:
- peaked: a bulk of randn * 2 with 30 tokens lifted by 5 to 15, rounded to bf16 (the model's logits
  are): nuclei of a few tokens, decided from each row's top 64 keys, as LLM steps mostly are;
- flat: randn: a top-p nucleus of most of the vocabulary, so top_p and both take the kernels' slow
  path (one program walks its row): the worst case, not the common one.
Before every replay fresh logits and positions (one of NUM_INPUTS sets) are copied into the graph's
static inputs, outside the timed region; variants replay in interleaved rounds, each between two CUDA
events; a point is the median in us. Before timing, every fused variant's tokens are compared with
sort_sample's on every set, eagerly: token_mismatches is expected to be 0 (only a top-p boundary within
float rounding of a cumulative mass, on the very token Gumbel-max picks, could part them).

    PYTHONPATH=src python3 benchmarks/sampler_ab.py --out OUT                       # GPU
    TRITON_INTERPRET=1 PYTHONPATH=src python3 benchmarks/sampler_ab.py --check-only --vocab 3000 \
        --batch-sizes 1,3 --blocks 256,512                                            # CPU: checks only

Prints the checks, a table, then one JSON line; --out writes sampler-ab-<device>.json (device, torch,
date, commit, settings, rows, checks).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

import torch

from graphrun.bench.report import emit, environment, headline, print_table
from graphrun.bench.timing import graph_replay_medians
from graphrun.llm.kernels.sampling import fused_sample
from graphrun.llm.sampler import SamplingTensors, greedy_sample, sort_sample

MIXES = {  # name -> (temperature, top_k, top_p)
    "temperature": (0.8, 0, 1.0),
    "top_p": (0.8, 0, 0.9),
    "top_k": (0.8, 50, 1.0),
    "both": (0.8, 50, 0.9),
}
NUM_INPUTS = 4  # distinct random (logits, positions) sets, cycled through the replays
Step = Callable[[torch.Tensor, SamplingTensors, torch.Tensor], torch.Tensor]  # -> (n,) tokens
Inputs = list[tuple[torch.Tensor, torch.Tensor]]  # (logits, positions) sets


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary (qwen3's by default)")
    p.add_argument("--batch-sizes", default="1,4,16,64")
    p.add_argument("--mixes", default=",".join(MIXES), help="parameter mixes: " + ", ".join(MIXES))
    p.add_argument("--logits", default="peaked,flat", help="logits kinds: peaked, flat")
    p.add_argument("--blocks", default="2048,4096,8192", help="logits per split program, fused")
    p.add_argument("--iters", type=int, default=200, help="timed replays per variant and point")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--check-only", action="store_true", help="check the variants, time nothing (CPU)")
    p.add_argument("--out", default=None, help="folder for sampler-ab-<device>.json")
    return p.parse_args()


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def fused(block: int) -> Step:
    def step(logits: torch.Tensor, params: SamplingTensors, positions: torch.Tensor) -> torch.Tensor:
        return fused_sample(
            logits, params.temperature, params.top_k, params.top_p, params.seeds, positions, block=block
        )

    return step


def variants(blocks: list[int]) -> dict[str, Step]:
    steps: dict[str, Step] = {"greedy": lambda logits, params, positions: greedy_sample(logits)}
    steps["torch"] = sort_sample
    steps |= {f"fused_{b}": fused(b) for b in blocks}
    return steps


def sampling_params(n: int, mix: str, device: torch.device) -> SamplingTensors:
    t, k, p = MIXES[mix]
    return SamplingTensors(
        temperature=torch.full((n,), t, device=device),
        top_k=torch.full((n,), k, dtype=torch.int32, device=device),
        top_p=torch.full((n,), p, device=device),
        seeds=torch.arange(n, dtype=torch.int64, device=device) * 7919 + 1,
    )


def logits_set(n: int, vocab: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    """(n, vocab) float32 logits of a kind (see the module docstring)."""
    if kind == "flat":
        return torch.randn(n, vocab, generator=gen)
    logits = torch.randn(n, vocab, generator=gen) * 2
    for row in logits:
        row[torch.randperm(vocab, generator=gen)[:30]] += torch.rand(30, generator=gen) * 10 + 5
    return logits.bfloat16().float()


def inputs(n: int, vocab: int, kind: str, device: torch.device) -> Inputs:
    gen = torch.Generator(device="cpu").manual_seed(n * 7 + vocab)
    return [
        (logits_set(n, vocab, kind, gen).to(device), torch.randint(0, 8192, (n,), generator=gen).to(device))
        for _ in range(NUM_INPUTS)
    ]


def check(step: Step, params: SamplingTensors, sets: Inputs) -> int:
    """Rows where a variant's token differs from sort_sample's, over every input set (run eagerly)."""
    return sum(int((step(lg, params, pos) != sort_sample(lg, params, pos)).sum()) for lg, pos in sets)


def time_variants(
    steps: dict[str, Step], params: SamplingTensors, sets: Inputs, args: Any
) -> dict[str, float]:
    """Median us per variant: each captured alone, replayed in interleaved rounds on fresh inputs."""
    logits, positions = (t.clone() for t in sets[0])  # the graphs' static inputs

    def stage(r: int) -> None:
        logits.copy_(sets[r % len(sets)][0])
        positions.copy_(sets[r % len(sets)][1])

    bodies = {name: functools.partial(step, logits, params, positions) for name, step in steps.items()}
    return graph_replay_medians(bodies, stage, args.iters, args.warmup)


def summary(us: dict[str, float]) -> dict[str, Any]:
    """The best fused variant, its time over torch's, and what each costs beyond greedy's argmax."""
    best = min((name for name in us if name.startswith("fused_")), key=us.__getitem__)
    return {
        "best_fused": best,
        "fused_over_torch": us[best] / us["torch"],
        "torch_over_greedy_us": us["torch"] - us["greedy"],
        "fused_over_greedy_us": us[best] - us["greedy"],
    }


def measure(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], list[dict]]:
    rows, checks = [], []
    steps = variants(ints(args.blocks))
    for kind in args.logits.split(","):
        for mix in args.mixes.split(","):
            for n in ints(args.batch_sizes):
                point = {"logits": kind, "mix": mix, "batch": n}
                sets, params = inputs(n, args.vocab, kind, device), sampling_params(n, mix, device)
                for name in (name for name in steps if name.startswith("fused_")):
                    checks.append(
                        {**point, "variant": name, "token_mismatches": check(steps[name], params, sets)}
                    )
                if args.check_only:
                    continue
                us = time_variants(steps, params, sets, args)
                rows.append({**point, **{f"{k}_us": v for k, v in us.items()}, **summary(us)})
                print(f"{kind} {mix} batch {n}: " + ", ".join(f"{k} {v:.1f} us" for k, v in us.items()))
    return rows, checks


def main() -> int:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.check_only:
        print("sampler_ab times CUDA graphs: run it on a GPU, or --check-only (TRITON_INTERPRET=1)")
        return 2
    rows, checks = measure(args, device)
    env = environment()
    print(headline(env))
    print_table(checks, ("logits", "mix", "batch", "variant", "token_mismatches"))
    ok = all(c["token_mismatches"] == 0 for c in checks)
    if rows:
        fused_columns = [f"fused_{b}_us" for b in ints(args.blocks)]
        print_table(rows, ("logits", "mix", "batch", "greedy_us", "torch_us", *fused_columns, "best_fused",
                           "fused_over_torch", "torch_over_greedy_us", "fused_over_greedy_us"))  # fmt: skip
    payload = {"benchmark": "sampler_ab", **env, "vocab": args.vocab, "iters": args.iters,
               "warmup": args.warmup, "blocks": ints(args.blocks), "mixes": {m: MIXES[m] for m in
               args.mixes.split(",")}, "ok": ok, "rows": rows, "checks": checks}  # fmt: skip
    emit(payload, args.out, "sampler-ab")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
