"""The decode step with the skinny GEMV projections against the same step with cuBLAS only (GPU only).

`PYTHONPATH=src python3 benchmarks/gemv_step_ab.py OUT_DIR`: for each variant, in its own process
(one engine's memory at a time), `graphrun bench decode` (qwen3-0.6b-shape, bf16, context 512; no peers)
and 256 greedy tokens from 4 seeded random prompts; then one table of graph-step medians side by side and
whether the greedy tokens of the two variants agree (and where they first differ). The cuBLAS variant
patches `gemv_config` to answer None, which is the code before the GEMV kernels. Writes
gemv-step-ab.json and each variant's decode-*.json under OUT_DIR/<variant>/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

VARIANTS = ("gemv", "cublas")
BATCHES = "1,2,4,8,16,64"
STEPS = 256
ENV_KEYS = ("device", "torch", "cuda", "python", "date", "commit", "dirty")


def child(variant: str, out: Path) -> None:
    """Run in a subprocess: one variant's decode bench and greedy tokens."""
    import graphrun.llm.kernels as kernels

    if variant == "cublas":
        kernels.gemv_config = lambda *args, **kwargs: None  # type: ignore[assignment]
    from graphrun.cli import main
    from graphrun.llm.api import LLM
    from graphrun.llm.sampling_params import SamplingParams

    code = main(["bench", "decode", "--batch-sizes", BATCHES, "--out", str(out)])
    if code:
        raise SystemExit(code)
    import torch

    gen = torch.Generator().manual_seed(7)
    prompts = torch.randint(1, 150000, (4, 64), generator=gen).tolist()
    llm = LLM("qwen3-0.6b-shape", dtype="bfloat16", max_num_seqs=4, gpu_memory_utilization=0.4)
    params = SamplingParams(temperature=0.0, max_tokens=STEPS, ignore_eos=True)
    tokens = {f"batch{b}": [c.token_ids for c in llm.generate(prompts[:b], params)] for b in (1, 4)}
    (out / "tokens.json").write_text(json.dumps(tokens))


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def main(out: Path) -> None:
    for variant in VARIANTS:
        subprocess.run([sys.executable, __file__, "--child", variant, str(out / variant)], check=True)
    decode = {v: json.loads(next((out / v).glob("decode-*.json")).read_text()) for v in VARIANTS}
    tokens = {v: json.loads((out / v / "tokens.json").read_text()) for v in VARIANTS}
    rows = []
    print(f"{'batch':>5} {'gemv ms':>8} {'cublas ms':>9} {'ratio':>6} {'floor ms':>8} {'gemv/floor':>10}")
    for g, c in zip(decode["gemv"]["results"], decode["cublas"]["results"], strict=True):
        gm, cm = g["graph"]["median_ms"], c["graph"]["median_ms"]
        rows.append({"batch": g["batch"], "gemv_ms": gm, "cublas_ms": cm, "floor_ms": g["floor_ms"],
                     "replay_gemv_ms": g["replay"]["median_ms"], "replay_cublas_ms": c["replay"]["median_ms"],
                     "tokens_match_graph_eager": [g["tokens_match"], c["tokens_match"]]})  # fmt: skip
        print(f"{g['batch']:5d} {gm:8.3f} {cm:9.3f} {cm / gm:6.2f} {g['floor_ms']:8.3f} {gm / g['floor_ms']:10.2f}")
    agree = {}
    for key in tokens["gemv"]:
        firsts = [first_difference(a, b) for a, b in zip(tokens["gemv"][key], tokens["cublas"][key], strict=True)]
        agree[key] = firsts
        print(f"greedy {STEPS} tokens, {key}: first difference per sequence (None: identical) {firsts}")
    payload = {"benchmark": "gemv-step-ab", **{k: decode["gemv"][k] for k in ENV_KEYS}, "rows": rows,
               "greedy_first_difference": agree, "steps": STEPS}  # fmt: skip
    (out / "gemv-step-ab.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]))
    else:
        main(Path(sys.argv[1]))
