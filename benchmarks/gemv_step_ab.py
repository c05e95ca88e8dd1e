"""The decode step with the skinny GEMV projections (norm fused or not) against cuBLAS only (GPU only).

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

VARIANTS = ("fused", "gemv", "cublas")  # fused: the code as shipped
BATCHES = "1,2,4,16,64"
STEPS = 256
ENV_KEYS = ("device", "torch", "cuda", "python", "date", "commit", "dirty")


def child(variant: str, out: Path) -> None:
    """Run in a subprocess: one variant's decode bench and greedy tokens."""
    import graphrun.llm.kernels as kernels

    if variant == "cublas":  # the code before the GEMV kernels: cuBLAS, then the separate norm kernel
        kernels.gemv_config = lambda *args, **kwargs: None  # type: ignore[assignment]
    elif variant == "gemv":  # GEMV products, the norm its own kernel
        kernels.norm_linear = lambda *args, **kwargs: None  # type: ignore[assignment]
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
    header = " ".join(f"{v + ' ms':>10}" for v in VARIANTS)
    print(f"{'batch':>5} {header} {'floor ms':>8} {'fused/floor':>11}")
    for points in zip(*(decode[v]["results"] for v in VARIANTS), strict=True):
        row = {"batch": points[0]["batch"], "floor_ms": points[0]["floor_ms"]}
        for v, p in zip(VARIANTS, points, strict=True):
            row[f"{v}_ms"] = p["graph"]["median_ms"]
            row[f"{v}_replay_ms"] = p["replay"]["median_ms"]
            row[f"{v}_tokens_match_graph_eager"] = p["tokens_match"]
        rows.append(row)
        times = " ".join(f"{row[f'{v}_ms']:10.3f}" for v in VARIANTS)
        print(f"{row['batch']:5d} {times} {row['floor_ms']:8.3f} {row['fused_ms'] / row['floor_ms']:11.2f}")
    agree = {}
    for v in VARIANTS[:-1]:
        for key in tokens[v]:
            pairs = zip(tokens[v][key], tokens["cublas"][key], strict=True)
            agree[f"{v}-vs-cublas-{key}"] = firsts = [first_difference(a, b) for a, b in pairs]
            print(f"greedy {STEPS} tokens, {v} vs cublas, {key}: first difference (None: identical) {firsts}")
    payload = {"benchmark": "gemv-step-ab", **{k: decode["fused"][k] for k in ENV_KEYS}, "rows": rows,
               "greedy_first_difference": agree, "steps": STEPS}  # fmt: skip
    (out / "gemv-step-ab.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]))
    else:
        main(Path(sys.argv[1]))
