"""Decode-step kernel candidates side by side in the graphed greedy step (issue 18; GPU only).

Candidates for the small-batch step, where a step is ~200 small kernels and each one's ramp and tail
cost more than its bytes (results/decode-profile-nvidia-h200.json: projections 2.6x their floor,
attention's two kernels per layer 13x). Measured and decided (H100, 2026-12-08,
results/experiments/decode-kernels-ab-*.json):
- the GEMV letting the next kernel be scheduled right after its PDL wait, not after its loop: 3% off
  the step at 1 and 4 rows, even at 16, the same tokens. Shipped; the "shipped" variant has it.
- the GEMV loading all of K's weights that fit a register budget before its wait (not only the first
  tile): slower alone (1.024 against 0.955 ms at one row), no better with the early trigger. Dropped.
- the decode attention's last split merging the partials itself (an arrival counter per sequence and
  kv head, instead of the merge kernel): 0.1 ms slower a step at 1-4 rows (its merge walked the splits
  one after another). Dropped; a merge that loads every split at once is the next design.
Still a candidate, in this script:
- rope: the decode attention kernel takes the QKV output and does qk_norm_rope_write's work itself
  (kernels/triton_ops.DecodeRope; that kernel goes, one a layer): 1% off at one row, 2% at 4, 3% at 16,
  but greedy tokens part from the shipped kernels' within a few steps at 4 and 16 rows; not wired into
  the engine until that is understood.
The kernel takes the candidate as an argument (paged_decode_attention's rope) and the engine passes none;
this script turns it on by patching, in its own process only, the decoder layer's forward
(`forward_one_kernel` below: the store and the attention in one call) while the variant's graphs are
captured. One engine (qwen3-0.6b-shape, bf16, prefix caching off, no graphs of its own) holds the
weights and KV cache; one set of decode graphs per variant is captured over them. Per batch size: greedy
tokens through each set compared with the first variant's (the first step that differs, None when none
does), and each set's greedy replay timed between CUDA events in interleaved rounds whose order
rotates; a point is the median. The floor is the step's bytes over the measured copy bandwidth.

    PYTHONPATH=src python3 benchmarks/decode_kernels_ab.py --out OUT

Prints a table then one JSON line; --out writes decode-kernels-ab-<device>.json. Exits 2 without a GPU.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from pdl_ab import (  # benchmarks/pdl_ab.py, beside this script
    build_engine,
    capture_under,
    first_difference,
    rollout,
    timed_point,
)

from graphrun.bench.decode import random_prompts
from graphrun.bench.decode_report import copy_bandwidth, step_floor
from graphrun.bench.report import emit, environment, headline, print_table
from graphrun.llm.engine import LLMEngine
from graphrun.llm.kernels import triton_ops
from graphrun.llm.layers.attention_backend import AttentionOp, TritonAttentionBackend
from graphrun.llm.models.decoder import DecoderLayer

SEED = 0


@dataclass(frozen=True)
class Variant:
    rope: bool = False


VARIANTS = {"shipped": Variant(), "rope": Variant(rope=True)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwen3-0.6b-shape")
    p.add_argument("--batch-sizes", default="1,2,4,16")
    p.add_argument("--context", type=int, default=512, help="prompt tokens before the timed step")
    p.add_argument("--steps", type=int, default=64, help="greedy tokens compared per batch size")
    p.add_argument("--iters", type=int, default=300, help="timed replays per variant and batch size")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds the replays are split into")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default=None, help="folder for decode-kernels-ab-<device>.json")
    return p.parse_args()


def backends(engine: LLMEngine) -> list[TritonAttentionBackend]:
    found = {id(m.backend): m.backend for m in engine.model.modules() if isinstance(m, AttentionOp)}
    out = [b for b in found.values() if isinstance(b, TritonAttentionBackend)]
    if not out:
        raise RuntimeError("the model has no Triton attention backend")
    return out


def forward_one_kernel():
    """DecoderLayer.forward with a decode step's norm, rotary, K/V store and attention in one kernel."""

    def forward(self, hidden, residual, rope, meta, kv_cache):
        if not meta.is_decode:
            return SHIPPED_FORWARD(self, hidden, residual, rope, meta, kv_cache)
        attn = self.self_attn
        qkv, residual = self._normed_linear(hidden, residual, self.input_layernorm, attn.qkv_proj)
        norms = attn.norms
        decode_rope = triton_ops.DecodeRope(
            attn.heads.num_heads, rope.positions, rope.cos_cache, rope.sin_cache,
            norms.q_norm.weight if norms is not None else None,
            norms.k_norm.weight if norms is not None else None,
            norms.q_norm.eps if norms is not None else 0.0, meta.slot_mapping,
        )  # fmt: skip
        k_cache, v_cache = kv_cache
        out = triton_ops.paged_decode_attention(
            qkv, k_cache, v_cache, meta.block_tables, meta.context_lens, attn.scale, decode_rope
        )
        return self.after_attention(out, residual)

    return forward


SHIPPED_FORWARD = DecoderLayer.forward


@contextmanager
def switched(variant: Variant) -> Iterator[None]:
    """The variant's patch in place (this process only), the shipped forward back after."""
    if variant.rope:
        DecoderLayer.forward = forward_one_kernel()
    try:
        yield
    finally:
        DecoderLayer.forward = SHIPPED_FORWARD


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available():
        print("decode_kernels_ab needs a GPU")
        return 2
    names = args.variants.split(",")
    bandwidth = copy_bandwidth("cuda", 2**30, torch.cuda.synchronize)
    sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    rows = []
    with torch.inference_mode():
        engine = build_engine(args, max(sizes))
        backends(engine)  # the variants patch the Triton path
        graphs = {name: capture_under(engine, sizes, switched(VARIANTS[name]), name) for name in names}
        for batch in sizes:
            prompts = random_prompts(batch, args.context, engine.model_config.vocab_size, SEED)
            greedy = {name: rollout(engine, g, prompts, args.steps) for name, g in graphs.items()}
            point = timed_point(engine, graphs, batch, args)
            floor = step_floor(engine.model_config, batch, args.context + 1, engine.dtype.itemsize, bandwidth)
            base = point["ms"][names[0]]
            floor_ms = floor.against(base)["floor_ms"]
            for name in names:
                ms = point["ms"][name]
                rows.append({
                    "batch": batch, "variant": name, "ms": ms, "over_first": ms / base,
                    "saved_us": (base - ms) * 1e3, "over_floor": ms / floor_ms,
                    "step_tokens_match": point["tokens"][name] == point["tokens"][names[0]],
                    "greedy_first_difference": first_difference(greedy[name], greedy[names[0]]),
                })  # fmt: skip
            print(
                f"batch {batch}: "
                + ", ".join(f"{n} {point['ms'][n]:.4f}" for n in names)
                + f" ms; floor {floor_ms:.4f}"
            )
    env = environment()
    print(headline(env))
    print_table(rows, ("batch", "variant", "ms", "over_first", "saved_us", "over_floor", "step_tokens_match",
                       "greedy_first_difference"))  # fmt: skip
    payload = {"benchmark": "decode_kernels_ab", **env, "model": args.model, "dtype": "bfloat16",
               "variants": {n: VARIANTS[n].__dict__ for n in names}, "steps": args.steps, "iters": args.iters,
               "warmup": args.warmup, "copy_bandwidth_gbs": bandwidth / 1e9, "rows": rows}  # fmt: skip
    emit(payload, args.out, "decode-kernels-ab")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
