"""Each Triton kernel against its torch reference: on the GPU when present, else through Triton's CPU
interpreter in float32 (tests/conftest.py sets TRITON_INTERPRET=1 before Triton is imported)."""

import pytest
import torch

triton = pytest.importorskip("triton")

from graphrun.llm.kernels import triton_ops as ops  # noqa: E402
from graphrun.llm.layers.attention import decode_attention_reference, write_kv  # noqa: E402
from graphrun.llm.layers.rotary import apply_rotary  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
TOL = 1e-4 if DTYPE is torch.float32 else 2e-2


def rand(*shape, dtype=DTYPE):
    return torch.randn(*shape, device=DEVICE, dtype=torch.float32).to(dtype)


@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(4, 2, 16), (8, 8, 32), (16, 8, 64)])
@pytest.mark.parametrize("max_blocks", [6, 30])  # a few splits per sequence, and one long split
@pytest.mark.parametrize("one_split", [False, True])  # one split: the program stores the output itself
def test_paged_decode_attention_matches_reference(
    heads, kv_heads, head_dim, max_blocks, one_split, monkeypatch
):
    torch.manual_seed(0)
    if one_split:
        monkeypatch.setattr(ops, "DECODE_MAX_SPLITS", 1)
    num_blocks, block_size = 40, 16
    k_cache, v_cache = (
        rand(num_blocks, block_size, kv_heads, head_dim),
        rand(num_blocks, block_size, kv_heads, head_dim),
    )
    lens = torch.tensor([1, 17, 96, 50], device=DEVICE, dtype=torch.int32)  # one block, partial, full, mid
    tables = torch.stack([torch.randperm(num_blocks)[:max_blocks] for _ in lens]).to(DEVICE, torch.int32)
    q = rand(len(lens), heads, head_dim)
    assert (ops.decode_splits(max_blocks * block_size, len(lens), kv_heads)[0] == 1) == one_split
    got = ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, head_dim**-0.5)
    want = decode_attention_reference(q, k_cache, v_cache, tables, lens, head_dim**-0.5)
    torch.testing.assert_close(got.float(), want.float(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(4, 2, 16), (8, 8, 32), (16, 1, 16)])
def test_paged_varlen_attention_matches_the_reference_loops(heads, kv_heads, head_dim):
    """Decode rows, a fresh prompt, continuation chunks (one longer than a tile, one not a tile's
    multiple) in one launch == the reference (decode kernel + per-sequence SDPA). 16 query heads per
    kv head split into two programs per tile (rows capped at VARLEN_MAX_ROWS)."""
    from graphrun.llm.layers.attention import (
        VARLEN_BLOCK_Q,
        AttentionMetadata,
        varlen_attention,
        varlen_tiles,
    )

    torch.manual_seed(heads + kv_heads)
    num_blocks, block_size = 48, 16
    k_cache = rand(num_blocks, block_size, kv_heads, head_dim)
    v_cache = rand(num_blocks, block_size, kv_heads, head_dim)
    q_lens = [1, 1, 1, 37, 20, 5]  # 3 decode rows, a fresh prompt, two continuation chunks
    ctx_lens = [9, 70, 16, 37, 90, 129]
    tables = torch.stack([torch.randperm(num_blocks)[:10] for _ in q_lens]).to(DEVICE, torch.int32)
    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(starts[-1], dtype=torch.int64, device=DEVICE),  # unread here
        block_tables=tables,
        context_lens=torch.tensor(ctx_lens, device=DEVICE, dtype=torch.int32),
        query_start=torch.tensor(starts, device=DEVICE, dtype=torch.int32),
        query_start_host=starts,
        context_lens_host=ctx_lens,
        num_decode=3,
    )
    q = rand(starts[-1], heads, head_dim)
    tiles = torch.tensor(varlen_tiles(starts), device=DEVICE, dtype=torch.int32)
    assert tiles.shape[0] == 3 + 3 + 2 + 1  # a tile per decode row, ceil(q_len / 16) per chunk
    scale = head_dim**-0.5
    got = ops.paged_varlen_attention(
        q, k_cache, v_cache, tables, meta.context_lens, meta.query_start, tiles, VARLEN_BLOCK_Q, scale
    )
    want = varlen_attention(q, k_cache, v_cache, meta, scale)
    torch.testing.assert_close(got.float(), want.float(), rtol=TOL, atol=TOL)


def test_paged_varlen_attention_writes_only_the_real_rows():
    """With `out` given, rows past query_start[-1] (a rung's padding) keep what they held."""
    from graphrun.llm.layers.attention import VARLEN_BLOCK_Q, varlen_tiles

    k_cache, v_cache = rand(4, 16, 2, 16), rand(4, 16, 2, 16)
    tables = torch.tensor([[1, 2]], device=DEVICE, dtype=torch.int32)
    q = rand(5, 4, 16)
    out = torch.zeros(8, 4, 16, device=DEVICE, dtype=DTYPE)
    tiles = torch.tensor(varlen_tiles([0, 5]), device=DEVICE, dtype=torch.int32)
    lens, starts = (torch.tensor(x, device=DEVICE, dtype=torch.int32) for x in ([20], [0, 5]))
    ops.paged_varlen_attention(q, k_cache, v_cache, tables, lens, starts, tiles, VARLEN_BLOCK_Q, 0.25, out)
    assert out[:5].abs().sum() > 0 and out[5:].abs().sum() == 0


@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rmsnorm_matches_reference(with_residual):
    from graphrun.llm.layers.norm import RMSNorm

    norm = RMSNorm(96, 1e-6).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(96) + 0.5)
    x, res = rand(5, 96), rand(5, 96) if with_residual else None
    got, got_sum = ops.add_rmsnorm(x, res, norm.weight.to(DTYPE), 1e-6)
    summed = x if res is None else x + res
    torch.testing.assert_close(got_sum, summed)
    torch.testing.assert_close(got.float(), (norm.to(DTYPE).normalize(summed)).float(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("with_norm", [False, True])
def test_qk_norm_rope_write_matches_reference(with_norm):
    heads, kv_heads, head_dim, tokens, max_pos = 4, 2, 16, 3, 64
    qkv = rand(tokens, (heads + 2 * kv_heads) * head_dim)
    packed = torch.tensor([[0, 3, 7], [5, 9, 7], [63, 30, 7]], device=DEVICE)  # strided columns, as in decode
    positions = packed[:, 0]
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=DEVICE).float() / head_dim))
    freqs = torch.arange(max_pos, device=DEVICE).float()[:, None] * inv[None]
    cos_cache, sin_cache = freqs.cos(), freqs.sin()
    qw = (torch.rand(head_dim, device=DEVICE) + 0.5).to(DTYPE) if with_norm else None
    kw = (torch.rand(head_dim, device=DEVICE) + 0.5).to(DTYPE) if with_norm else None
    k_cache = torch.zeros(4, 8, kv_heads, head_dim, device=DEVICE, dtype=DTYPE)
    v_cache = torch.zeros_like(k_cache)
    slots = packed[:, 1]
    q = ops.qk_norm_rope_write(
        qkv, positions, cos_cache, sin_cache, qw, kw, 1e-6, slots, k_cache, v_cache, heads
    )

    q_ref, k_ref, v_ref = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q_ref, k_ref = q_ref.view(tokens, heads, head_dim), k_ref.view(tokens, kv_heads, head_dim)
    if with_norm:

        def norm(x, w):
            xf = x.float()
            return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)

        q_ref, k_ref = norm(q_ref, qw), norm(k_ref, kw)
    cos, sin = cos_cache[positions][:, None].to(DTYPE), sin_cache[positions][:, None].to(DTYPE)
    q_ref, k_ref = apply_rotary(q_ref, cos, sin), apply_rotary(k_ref, cos, sin)
    k_want, v_want = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    write_kv(k_want, v_want, k_ref, v_ref.reshape(tokens, kv_heads, head_dim), slots)
    torch.testing.assert_close(q.float(), q_ref.float(), rtol=TOL, atol=TOL)
    torch.testing.assert_close(k_cache.float(), k_want.float(), rtol=TOL, atol=TOL)
    torch.testing.assert_close(v_cache, v_want)


@pytest.mark.parametrize("with_norm", [False, True])
@pytest.mark.parametrize("max_blocks", [6, 30])  # a few splits per sequence, and one long split
def test_decode_attention_with_rope_is_rope_write_then_attention(with_norm, max_blocks):
    """The decode kernel given the QKV output (DecodeRope) stores the same K/V and attends to the same
    result as qk_norm_rope_write followed by the decode kernel; the last position of a sequence falls
    in a different split per sequence (lengths 1, 17, 96, 50)."""
    torch.manual_seed(7 + with_norm)
    heads, kv_heads, head_dim, num_blocks, block_size, max_pos = 4, 2, 16, 40, 16, 128
    lens = torch.tensor([1, 17, 96, 50], device=DEVICE, dtype=torch.int32)
    tables = torch.stack([torch.randperm(num_blocks)[:max_blocks] for _ in lens]).to(DEVICE, torch.int32)
    last = (lens - 1).long()
    slots = tables.long().gather(1, (last // block_size)[:, None])[:, 0] * block_size + last % block_size
    packed = torch.stack([last, slots, last], dim=1)  # strided columns, as the decode step packs them
    qkv = rand(len(lens), (heads + 2 * kv_heads) * head_dim)
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=DEVICE).float() / head_dim))
    freqs = torch.arange(max_pos, device=DEVICE).float()[:, None] * inv[None]
    cos_cache, sin_cache = freqs.cos(), freqs.sin()
    qw = (torch.rand(head_dim, device=DEVICE) + 0.5).to(DTYPE) if with_norm else None
    kw = (torch.rand(head_dim, device=DEVICE) + 0.5).to(DTYPE) if with_norm else None
    k_cache = rand(num_blocks, block_size, kv_heads, head_dim)
    v_cache = rand(num_blocks, block_size, kv_heads, head_dim)
    k_want, v_want = k_cache.clone(), v_cache.clone()
    q = ops.qk_norm_rope_write(
        qkv, packed[:, 0], cos_cache, sin_cache, qw, kw, 1e-6, packed[:, 1], k_want, v_want, heads
    )
    want = ops.paged_decode_attention(q, k_want, v_want, tables, lens, head_dim**-0.5)
    rope = ops.DecodeRope(heads, packed[:, 0], cos_cache, sin_cache, qw, kw, 1e-6, packed[:, 1])
    got = ops.paged_decode_attention(qkv, k_cache, v_cache, tables, lens, head_dim**-0.5, rope)
    assert torch.equal(v_cache, v_want)  # copied; k is computed (compiled reductions may round apart)
    torch.testing.assert_close(k_cache.float(), k_want.float(), rtol=TOL, atol=TOL)
    torch.testing.assert_close(got.float(), want.float(), rtol=TOL, atol=TOL)


def test_silu_mul_matches_reference():
    x = rand(3, 2 * 200)
    gate, up = x.chunk(2, dim=-1)
    torch.testing.assert_close(
        ops.silu_mul(x).float(), (torch.nn.functional.silu(gate) * up).float(), rtol=TOL, atol=TOL
    )


def test_tiny_model_fused_path_equals_torch_path(monkeypatch):
    """The model wired to the Triton kernels gives the torch path's logits, prefill and decode."""
    from graphrun.llm import kernels
    from graphrun.llm.kv_cache import KVCacheSpec, allocate_kv_cache
    from graphrun.llm.layers import mlp, norm
    from graphrun.llm.layers.attention import AttentionMetadata
    from graphrun.llm.layers.attention_backend import TorchAttentionBackend, TritonAttentionBackend
    from graphrun.llm.presets import load_model

    def run(fused: bool) -> torch.Tensor:
        for module in (norm, mlp, kernels):  # kernels: skinny_enabled() for the LM head
            monkeypatch.setattr(module, "triton_enabled", lambda t, fused=fused: fused)
        backend = TritonAttentionBackend() if fused else TorchAttentionBackend()
        model, _, cfg = load_model("tiny", DTYPE, DEVICE, attention_backend=backend)  # same weights
        kv = allocate_kv_cache(KVCacheSpec.from_model(cfg, 16, DTYPE), 8, DEVICE)
        tables = torch.tensor([[1, 2]], device=DEVICE, dtype=torch.int32)
        prompt = torch.tensor(
            [5, 77, 300, 2, 9, 41, 8, 100, 255, 3, 17, 60, 61, 62, 63, 64, 65, 1], device=DEVICE
        )
        n = len(prompt)
        meta = AttentionMetadata(
            slot_mapping=torch.arange(16, 16 + n, device=DEVICE),
            block_tables=tables,
            context_lens=torch.tensor([n], device=DEVICE, dtype=torch.int32),
            query_start=torch.tensor([0, n], device=DEVICE, dtype=torch.int32),
            query_start_host=[0, n],
            context_lens_host=[n],
        )
        with torch.inference_mode():
            prefill = model.compute_logits(model(prompt, torch.arange(n, device=DEVICE), meta, kv)[-1:])
            step = AttentionMetadata(
                slot_mapping=torch.tensor([16 + n], device=DEVICE),
                block_tables=tables,
                context_lens=torch.tensor([n + 1], device=DEVICE, dtype=torch.int32),
            )
            token = prefill.argmax(-1)
            decode = model.compute_logits(model(token, torch.tensor([n], device=DEVICE), step, kv))
        return torch.cat([prefill, decode])

    torch.testing.assert_close(run(True), run(False), rtol=TOL, atol=TOL)


@pytest.mark.parametrize(("m", "n", "k"), [(1, 48, 64), (3, 100, 96), (16, 64, 768)])
def test_skinny_logits_match_the_lm_head(m, n, k):
    torch.manual_seed(m + n + k)
    hidden, w = rand(m, k), rand(n, k) * 0.1
    got = ops.skinny_logits(hidden, w)
    want = torch.nn.functional.linear(hidden, w).float()  # compute_logits: model dtype, then float32
    assert got.shape == (m, n) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_skinny_logits_reject_what_they_cannot_do():
    with pytest.raises(ValueError, match="at most 16 rows"):
        ops.skinny_logits(rand(17, 64), rand(4, 64))
    with pytest.raises(ValueError, match="does not fit"):
        ops.skinny_logits(rand(2, 64), rand(4, 128))
    with pytest.raises(ValueError, match="multiple of 16"):
        ops.skinny_logits(rand(2, 40), rand(4, 40))
    assert [ops.skinny_block_k(k) for k in (1024, 896, 96, 40)] == [256, 128, 32, 0]
