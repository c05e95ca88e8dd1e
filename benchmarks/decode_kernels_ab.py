"""Decode-step kernel variants side by side in the graphed greedy step (issue 18; GPU only).

Candidates for the batch-1 step, where a step is ~200 small kernels and each one's ramp and tail cost
more than its bytes (results/decode-profile-nvidia-h200.json: projections 2.6x their floor, attention's
two kernels per layer 13x):
- shipped: the kernels as they are;
- merge: the decode attention's last split merges the partials itself (an arrival counter per
  sequence and kv head), so the merge kernel goes: one attention kernel per layer instead of two;
- wide: each skinny GEMV program loads as much of its weights as fits a register budget (all of K for
  qwen3-0.6b-shape's QKV, O and gate/up at one row) before its PDL wait, instead of the first tile;
- wide_early: wide, and each GEMV lets the next kernel be scheduled right after its own wait rather
  than after its loop, so the next projection's weights stream in during this one's work;
- one_kernel: merge, and the decode attention kernel also norms and rotates q and this step's k and
  stores k and v (DecodeRope), so qk_norm_rope_write's kernel goes too: one kernel per layer between
  the QKV and O projections instead of three;
- all: one_kernel + wide_early.
The kernels take each candidate as an argument (kernels/triton_ops.paged_decode_attention's counters and
rope, kernels/gemv's prefetch_k and early_trigger); the engine passes none of them. This script turns
them on by patching, in its own process only, the places that choose: the attention backend's decode
(merge), the decoder layer's forward (one_kernel: the store and the attention in one call, as
`forward_one_kernel` below) and kernels.gemv_config (wide, early; the register budget is `prefetch_k`
below). One engine (qwen3-0.6b-shape, bf16, prefix caching off, no graphs of its own) holds the weights
and KV cache; one set of decode graphs per variant is captured over them with its patches in place while
it is captured. Per batch size:
greedy tokens through each set compared with shipped's (the first step that differs, None when none
does), and each set's greedy replay timed between CUDA events in interleaved rounds whose order
rotates; a point is the median. The floor is the step's bytes over the measured copy bandwidth.

    PYTHONPATH=src python3 benchmarks/decode_kernels_ab.py --out OUT

Prints a table then one JSON line; --out writes decode-kernels-ab-<device>.json. Exits 2 without a GPU.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import triton
from pdl_ab import (  # benchmarks/pdl_ab.py, beside this script
    build_engine,
    first_difference,
    rollout,
    timed_point,
)
from prometheus_client import CollectorRegistry

from graphrun.bench.decode import random_prompts
from graphrun.bench.decode_report import copy_bandwidth, step_floor
from graphrun.bench.report import emit, environment, headline, print_table
from graphrun.llm import kernels
from graphrun.llm.decode_graph import DecodeGraphs, DecodeShape
from graphrun.llm.engine import LLMEngine
from graphrun.llm.kernels import GemvConfig, triton_ops
from graphrun.llm.layers.attention_backend import AttentionOp, TritonAttentionBackend
from graphrun.llm.models.decoder import DecoderLayer

SEED = 0


@dataclass(frozen=True)
class Variant:
    merge: bool = False
    rope: bool = False
    wide: bool = False
    early: bool = False


VARIANTS = {
    "shipped": Variant(),
    "merge": Variant(merge=True),
    "wide": Variant(wide=True),
    "wide_early": Variant(wide=True, early=True),
    "one_kernel": Variant(merge=True, rope=True),
    "all": Variant(merge=True, rope=True, wide=True, early=True),
}


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


PREFETCH_PRODUCTS_PER_THREAD = 64  # float32 products a GEMV thread may hold for its prefetched weights


def prefetch_k(k: int, config: GemvConfig, rows: int, silu_mul: bool) -> int:
    """The widest power of two <= k, a multiple of block_k, whose products fit the register budget."""
    budget = PREFETCH_PRODUCTS_PER_THREAD * 32 * config.num_warps
    per_k = triton.next_power_of_2(rows) * config.block_n * (2 if silu_mul else 1)
    pre = config.block_k
    while pre * 2 <= k and per_k * pre * 2 <= budget:
        pre *= 2
    return pre


def backends(engine: LLMEngine) -> list[TritonAttentionBackend]:
    found = {id(m.backend): m.backend for m in engine.model.modules() if isinstance(m, AttentionOp)}
    out = [b for b in found.values() if isinstance(b, TritonAttentionBackend)]
    if not out:
        raise RuntimeError("the model has no Triton attention backend")
    return out


def forward_one_kernel(counters: torch.Tensor):
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
            qkv, k_cache, v_cache, meta.block_tables, meta.context_lens, attn.scale, counters, decode_rope
        )
        return self.after_attention(out, residual)

    return forward


SHIPPED_FORWARD = DecoderLayer.forward
SHIPPED_GEMV_CONFIG = kernels.gemv_config


@contextmanager
def switched(engine: LLMEngine, variant: Variant, counters: torch.Tensor) -> Iterator[None]:
    """The variant's patches in place (this process only), the shipped code back after."""
    attention = backends(engine)

    def merged_decode(q, k_cache, v_cache, block_tables, context_lens, scale):
        return triton_ops.paged_decode_attention(
            q, k_cache, v_cache, block_tables, context_lens, scale, counters
        )

    def gemv_config(m: int, n: int, k: int, silu_mul: bool = False) -> GemvConfig | None:
        config = SHIPPED_GEMV_CONFIG(m, n, k, silu_mul)
        if config is None:
            return None
        pre = prefetch_k(k, config, m, silu_mul) if variant.wide else 0
        return replace(config, prefetch_k=pre, early_trigger=variant.early)

    if variant.merge:
        for b in attention:
            b.decode = merged_decode  # the instance's attribute hides the class's method
    if variant.rope:
        DecoderLayer.forward = forward_one_kernel(counters)
    kernels.gemv_config = gemv_config
    try:
        yield
    finally:
        kernels.gemv_config = SHIPPED_GEMV_CONFIG
        DecoderLayer.forward = SHIPPED_FORWARD
        for b in attention:
            b.__dict__.pop("decode", None)


def capture(engine: LLMEngine, sizes: list[int], variant: Variant, counters: torch.Tensor) -> DecodeGraphs:
    shape = DecodeShape(
        engine.config.max_num_seqs, engine.max_blocks_per_seq, engine.max_model_len, engine.num_blocks,
        engine.config.block_size, engine.model_config.vocab_size,
    )  # fmt: skip
    with switched(engine, variant, counters):
        graphs = DecodeGraphs(
            engine.model, engine.kv_caches, engine.last_tokens, shape, sizes, backend="cuda",
            registry=CollectorRegistry(),
        )  # fmt: skip
    eager = [
        f"{kind} {st.size}" for kind, r in graphs.runners.items() for st in r.status() if not st.captured
    ]
    if eager:
        raise RuntimeError(f"{variant}: rungs not captured: {eager}")
    return graphs


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
        counters = triton_ops.split_counters("cuda")
        graphs = {name: capture(engine, sizes, VARIANTS[name], counters) for name in names}
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
