"""Triton kernels for the decode hot path, each replacing a chain of small torch kernels.

Inside a CUDA graph every extra kernel costs ~1.3 us, so a 28-layer decode step pays for each kernel
per layer 28 times. These fuse what a layer does between its matrix products:
- paged_decode_attention: one query per sequence over only its filled cache blocks (the torch reference
  reads all max_blocks_per_seq blocks);
- paged_varlen_attention: a prefill or mixed step's attention, decode rows and prompt chunks of every
  sequence in one launch (the torch reference loops over sequences on the host, ~10 kernels each);
- add_rmsnorm: residual add + RMSNorm (6 kernels -> 1);
- qk_norm_rope_write: per-head q/k RMSNorm, rotary, and the K/V cache write (~20 kernels -> 1);
- silu_mul: SiLU(gate) * up (3 kernels -> 1).
All take device tensors only and read nothing on the host, so they capture into graphs. Numerics: loads
in the storage dtype, math in float32, one rounding on store.
On Hopper each launches with programmatic dependent launch (kernels/pdl.py): USE_PDL places its
gdc_wait before the first load of another kernel's output (after only weight loads, where it has any)
and its gdc_launch_dependents once its main loads are issued; the results do not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from graphrun.llm.kernels import SKINNY_MAX_ROWS, pdl  # SKINNY_MAX_ROWS: one 16-row MMA tile


@triton.jit(do_not_specialize=["NUM_SPLITS", "ITERS"])
def _paged_decode_split_kernel(
    q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, m_ptr, l_ptr, acc_ptr, out_ptr, scale,
    stride_qs, stride_qh, stride_kb, stride_kt, stride_kh, stride_ts, stride_os, stride_oh, NUM_SPLITS, ITERS,
    pos_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, slot_ptr, eps, stride_pos, stride_slot,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, TOKENS: tl.constexpr, ROPE: tl.constexpr,
    HAS_NORM: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """One (sequence, kv head, context split): softmax partials of its GROUP query heads.

    NUM_SPLITS and ITERS are runtime values: one compiled kernel serves every rung of the ladder (each
    distinct constant would cost a compile at start-up), and the loop runs only over the chunks below
    the sequence's length, a plain loop the compiler can pipeline. With one split per sequence (large
    batches) the program normalizes and stores the output itself: no partials, no merge kernel.
    With USE_PDL it waits first: everything it reads (q, this step's K/V, the context lengths and block
    tables, cast in-graph) is an earlier kernel's output; every split waits, even one past the context.
    """
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(lens_ptr + seq)
    rows = tl.arange(0, GROUP_PAD)
    heads = kv_head * GROUP + rows
    row_ok = rows < GROUP
    dims = tl.arange(0, HEAD_DIM)
    split_start = split * ITERS * TOKENS
    if ROPE:  # q_ptr is the QKV projection's output: norm and rotate q here, store this step's K/V
        q = _rope_query_and_store_kv(
            q_ptr + seq * stride_qs, k_ptr, v_ptr, pos_ptr + seq * stride_pos, cos_ptr, sin_ptr, qw_ptr,
            kw_ptr, slot_ptr + seq * stride_slot, eps, kv_head, heads, row_ok,
            ctx - 1 - split_start < ITERS * TOKENS, ctx - 1 >= split_start, stride_kb, stride_kt, stride_kh,
            NUM_HEADS, NUM_KV_HEADS, GROUP_PAD, HEAD_DIM, BLOCK_SIZE, HAS_NORM,
        )  # fmt: skip
    else:
        q_rows = q_ptr + seq * stride_qs + heads[:, None] * stride_qh + dims[None, :]
        q = tl.load(q_rows, mask=row_ok[:, None], other=0.0)
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    remaining = ctx - split_start  # splits past the context read nothing: only filled blocks are touched
    num_iters = tl.where(remaining > 0, tl.minimum((remaining + TOKENS - 1) // TOKENS, ITERS), 0)
    for it in range(0, num_iters):
        pos = split_start + it * TOKENS + tl.arange(0, TOKENS)
        pos_ok = pos < ctx
        block = tl.load(tables_ptr + seq * stride_ts + pos // BLOCK_SIZE, mask=pos_ok, other=0)
        offsets = block.to(tl.int64) * stride_kb + (pos % BLOCK_SIZE) * stride_kt + kv_head * stride_kh
        k = tl.load(k_ptr + offsets[:, None] + dims[None, :], mask=pos_ok[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k)).to(tl.float32) * scale  # (GROUP_PAD, TOKENS)
        scores = tl.where(pos_ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m - m_new)
        v = tl.load(v_ptr + offsets[:, None] + dims[None, :], mask=pos_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        m = m_new
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    if NUM_SPLITS == 1:  # every context token is in this program: the result is final (ctx >= 1)
        out = acc / l_sum[:, None]
        out_rows = out_ptr + seq * stride_os + heads[:, None] * stride_oh + dims[None, :]
        tl.store(out_rows, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        part = (seq * NUM_HEADS + heads) * NUM_SPLITS + split  # (GROUP_PAD,) rows of the partial buffers
        tl.store(m_ptr + part, m, mask=row_ok)
        tl.store(l_ptr + part, l_sum, mask=row_ok)
        tl.store(acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None])


@triton.jit
def _rope_query_and_store_kv(
    row_ptr, k_ptr, v_ptr, pos_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, slot_ptr, eps, kv_head, heads, row_ok,
    before_end, after_start, stride_kb, stride_kt, stride_kh,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, HAS_NORM: tl.constexpr,
):  # fmt: skip
    """The group's query rows normed and rotated as qk_norm_rope_write does, (GROUP_PAD, HEAD_DIM) in the
    storage dtype. The split that holds the sequence's last position (before_end & after_start) also
    norms, rotates and stores this step's key, and stores its value, for its kv head, then waits at a
    barrier so that its own threads read them back from the cache in the loop; no other split reads
    that position."""
    half = HEAD_DIM // 2
    d = tl.arange(0, HEAD_DIM // 2)
    pos = tl.load(pos_ptr)
    cos = tl.load(cos_ptr + pos * half + d)[None, :]
    sin = tl.load(sin_ptr + pos * half + d)[None, :]
    q1, q2 = _norm_rotate(row_ptr + heads[:, None] * HEAD_DIM, d, row_ok[:, None], qw_ptr, cos, sin, eps,
                          HEAD_DIM, HAS_NORM)  # fmt: skip
    if before_end & after_start:
        one = tl.full([1, 1], 1, tl.int1)
        k_row = row_ptr + (NUM_HEADS + kv_head) * HEAD_DIM + tl.zeros([1, 1], tl.int32)
        k1, k2 = _norm_rotate(k_row, d, one, kw_ptr, cos, sin, eps, HEAD_DIM, HAS_NORM)
        slot = tl.load(slot_ptr).to(tl.int64)
        dst = (slot // BLOCK_SIZE) * stride_kb + (slot % BLOCK_SIZE) * stride_kt + kv_head * stride_kh
        tl.store(k_ptr + dst + d[None, :], k1)
        tl.store(k_ptr + dst + half + d[None, :], k2)
        v_src = row_ptr + (NUM_HEADS + NUM_KV_HEADS + kv_head) * HEAD_DIM
        tl.store(v_ptr + dst + d, tl.load(v_src + d))
        tl.store(v_ptr + dst + half + d, tl.load(v_src + half + d))
        tl.debug_barrier()
    return tl.reshape(tl.permute(tl.join(q1, q2), (0, 2, 1)), (GROUP_PAD, HEAD_DIM))


@triton.jit
def _norm_rotate(ptrs, d, mask, w_ptr, cos, sin, eps, HEAD_DIM: tl.constexpr, HAS_NORM: tl.constexpr):
    """Rows at ptrs (R, 1) of HEAD_DIM values: RMS-normed by w (HAS_NORM) and rotated, as the two halves
    (R, HEAD_DIM // 2) in the storage dtype, rounded where qk_norm_rope_write rounds."""
    x1 = tl.load(ptrs + d[None, :], mask=mask, other=0.0)
    x2 = tl.load(ptrs + HEAD_DIM // 2 + d[None, :], mask=mask, other=0.0)
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    if HAS_NORM:
        rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / HEAD_DIM + eps)[:, None]
        x1 = (x1 * rstd).to(dtype).to(tl.float32) * tl.load(w_ptr + d).to(tl.float32)[None, :]
        x2 = (x2 * rstd).to(dtype).to(tl.float32) * tl.load(w_ptr + HEAD_DIM // 2 + d).to(tl.float32)[None, :]
    return (x1 * cos - x2 * sin).to(dtype), (x2 * cos + x1 * sin).to(dtype)


@triton.jit(do_not_specialize=["NUM_SPLITS"])
def _paged_decode_merge_kernel(
    m_ptr, l_ptr, acc_ptr, out_ptr, stride_os, stride_oh, NUM_SPLITS,
    NUM_HEADS: tl.constexpr, SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """Combine the splits of one (sequence, head): rescale each partial to the global max and normalise."""
    if USE_PDL:  # the partials are the split kernel's
        tl.extra.cuda.gdc_wait()
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    ok = splits < NUM_SPLITS
    dims = tl.arange(0, HEAD_DIM)
    base = (seq * NUM_HEADS + head) * NUM_SPLITS
    m = tl.load(m_ptr + base + splits, mask=ok, other=float("-inf"))
    l_sum = tl.load(l_ptr + base + splits, mask=ok, other=0.0)
    m_max = tl.max(m, axis=0)
    w = tl.where(l_sum > 0, tl.exp(m - m_max), 0.0)  # empty splits (past the context) weigh nothing
    acc = tl.load(acc_ptr + (base + splits)[:, None] * HEAD_DIM + dims[None, :], mask=ok[:, None], other=0.0)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l_sum * w, axis=0)
    tl.store(out_ptr + seq * stride_os + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty))


DECODE_TOKENS = 64  # cache tokens per inner iteration
DECODE_MAX_SPLITS = 32  # splits per sequence at most
DECODE_TARGET_PROGRAMS = 512  # enough (sequence, kv head, split) programs to fill an H100's 132 SMs


def decode_splits(max_context: int, num_seqs: int, kv_heads: int) -> tuple[int, int]:
    """(splits, iterations per split) covering max_context tokens.

    Splits exist to give small batches enough parallel programs; a batch that fills the GPU on its own
    gets fewer, since each split costs a partial result written and merged.
    """
    chunks = triton.cdiv(max_context, DECODE_TOKENS)
    wanted = triton.cdiv(DECODE_TARGET_PROGRAMS, num_seqs * kv_heads)
    splits = max(1, min(DECODE_MAX_SPLITS, wanted, chunks))
    iters = triton.cdiv(chunks, splits)
    return triton.cdiv(chunks, iters), iters


@dataclass(frozen=True, slots=True)
class DecodeRope:
    """What qk_norm_rope_write would take, for paged_decode_attention to do its work in the same kernel:
    q is then the QKV projection's output and the step's K/V are stored by the attention kernel."""

    num_heads: int
    positions: torch.Tensor  # (num_seqs,) int64, may be a strided view
    cos_cache: torch.Tensor  # (max_positions, head_dim // 2) float32
    sin_cache: torch.Tensor
    q_norm_weight: torch.Tensor | None  # (head_dim,), None for a model without q/k norms
    k_norm_weight: torch.Tensor | None
    eps: float
    slot_mapping: torch.Tensor  # (num_seqs,) int64, may be a strided view


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    rope: DecodeRope | None = None,
) -> torch.Tensor:
    """q (num_seqs, num_heads, head_dim) over the cache -> (num_seqs, num_heads, head_dim).

    Flash-decoding: the context is split into fixed chunks (from the block-table width, so the grid is
    static and capturable); each program covers one chunk of one sequence and kv head, and skips chunks
    past the sequence's length; a second kernel merges the chunks' softmax partials.

    rope: q is qkv (num_seqs, (num_heads + 2 kv_heads) * head_dim), the QKV projection's output; each
    program norms and rotates its query heads, and the split holding a sequence's last position stores
    its key (normed, rotated) and value in the cache first: qk_norm_rope_write and this in one kernel.
    """
    _, block_size, kv_heads, head_dim = k_cache.shape
    num_seqs = q.shape[0]
    num_heads = q.shape[1] if rope is None else rope.num_heads
    group = num_heads // kv_heads
    splits, iters = decode_splits(block_tables.shape[1] * block_size, num_seqs, kv_heads)
    options = pdl.launch_options(q.device)
    out = torch.empty(num_seqs, num_heads, head_dim, dtype=q.dtype, device=q.device)
    partial_m = torch.empty(num_seqs, num_heads, splits, dtype=torch.float32, device=q.device)
    partial_l = torch.empty_like(partial_m)
    partial_acc = torch.empty(num_seqs, num_heads, splits, head_dim, dtype=torch.float32, device=q.device)
    if rope is not None:
        has_norm = rope.q_norm_weight is not None and rope.k_norm_weight is not None
        qw = rope.q_norm_weight if rope.q_norm_weight is not None else rope.cos_cache
        kw = rope.k_norm_weight if rope.k_norm_weight is not None else rope.cos_cache
        rope_args = (rope.positions, rope.cos_cache, rope.sin_cache, qw, kw, rope.slot_mapping, rope.eps,
                     rope.positions.stride(0), rope.slot_mapping.stride(0))  # fmt: skip
        stride_qh = head_dim
    else:
        has_norm = False
        rope_args = (context_lens, q, q, q, q, context_lens, 0.0, 0, 0)  # (not read without rope)
        stride_qh = q.stride(1)
    _paged_decode_split_kernel[(num_seqs, kv_heads, splits)](
        q, k_cache, v_cache, block_tables, context_lens, partial_m, partial_l, partial_acc, out, scale,
        q.stride(0), stride_qh, k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1), splits, iters, *rope_args,
        NUM_HEADS=num_heads, NUM_KV_HEADS=kv_heads, GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        TOKENS=DECODE_TOKENS, ROPE=rope is not None, HAS_NORM=has_norm, **options,
    )  # fmt: skip
    if splits == 1:
        return out
    _paged_decode_merge_kernel[(num_seqs, num_heads)](
        partial_m, partial_l, partial_acc, out, out.stride(0), out.stride(1), splits,
        NUM_HEADS=num_heads, SPLITS_PAD=triton.next_power_of_2(DECODE_MAX_SPLITS), HEAD_DIM=head_dim,
        **options,
    )  # fmt: skip
    return out


@triton.jit
def _paged_varlen_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, lens_ptr, qstart_ptr, tiles_ptr, scale,
    stride_qs, stride_qh, stride_kb, stride_kt, stride_kh, stride_ts, stride_os, stride_oh,
    GROUP: tl.constexpr, HEADS_PER: tl.constexpr, PARTS: tl.constexpr, BLOCK_Q: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, TOKENS: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """One (tile of BLOCK_Q query tokens of one sequence, kv head, part of its query-head group).

    The tile's BLOCK_Q tokens times HEADS_PER query heads are the rows of one matrix, so the keys and
    values read for a kv head serve all its query heads at once. Query i of a sequence whose chunk has
    q_len tokens over ctx cached ones (this step's included) sits at position ctx - q_len + i and sees
    keys 0..that position (causal, aligned to the bottom right); key 0 is visible to every row, so no
    row's softmax is empty. The loop stops at the tile's last visible key. With USE_PDL it waits first,
    as the decode kernel does (it reads only earlier kernels' outputs).
    """
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    tile = tl.program_id(0)
    kv_head = tl.program_id(1) // PARTS
    part = tl.program_id(1) % PARTS
    seq = tl.load(tiles_ptr + 2 * tile)
    first = tl.load(tiles_ptr + 2 * tile + 1)  # the tile's first query, counted within its sequence
    q_begin = tl.load(qstart_ptr + seq)
    q_len = tl.load(qstart_ptr + seq + 1) - q_begin
    ctx = tl.load(lens_ptr + seq)
    rows = tl.arange(0, BLOCK_Q * HEADS_PER)
    query = first + rows // HEADS_PER
    in_group = part * HEADS_PER + rows % HEADS_PER
    heads = kv_head * GROUP + in_group
    row_ok = (query < q_len) & (in_group < GROUP)
    query_pos = ctx - q_len + query
    dims = tl.arange(0, HEAD_DIM)
    token = (q_begin + query).to(tl.int64)
    q = tl.load(
        q_ptr + token[:, None] * stride_qs + heads[:, None] * stride_qh + dims[None, :],
        mask=row_ok[:, None], other=0.0,
    )  # fmt: skip
    m = tl.full([BLOCK_Q * HEADS_PER], float("-inf"), tl.float32)
    l_sum = tl.zeros([BLOCK_Q * HEADS_PER], tl.float32)
    acc = tl.zeros([BLOCK_Q * HEADS_PER, HEAD_DIM], tl.float32)
    end = tl.minimum(ctx, ctx - q_len + first + BLOCK_Q)  # keys [0, end) are visible to some row
    for start in range(0, end, TOKENS):
        pos = start + tl.arange(0, TOKENS)
        pos_ok = pos < end
        block = tl.load(tables_ptr + seq * stride_ts + pos // BLOCK_SIZE, mask=pos_ok, other=0)
        offsets = block.to(tl.int64) * stride_kb + (pos % BLOCK_SIZE) * stride_kt + kv_head * stride_kh
        k = tl.load(k_ptr + offsets[:, None] + dims[None, :], mask=pos_ok[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k)).to(tl.float32) * scale  # (rows, TOKENS)
        visible = pos_ok[None, :] & (pos[None, :] <= query_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m - m_new)
        v = tl.load(v_ptr + offsets[:, None] + dims[None, :], mask=pos_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        m = m_new
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    out = acc / l_sum[:, None]
    tl.store(
        out_ptr + token[:, None] * stride_os + heads[:, None] * stride_oh + dims[None, :],
        out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None],
    )  # fmt: skip


VARLEN_TOKENS = 64  # cache tokens per inner iteration of the varlen kernel
VARLEN_MAX_ROWS = 128  # query tokens x query heads in one program at most


def paged_varlen_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    query_start: torch.Tensor,
    tiles: torch.Tensor,
    block_q: int,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """A prefill or mixed step's attention in one launch: every sequence's new tokens (one for a decode
    row, a chunk for a prompt) over its cached context, causal.

    q (num_tokens, num_heads, head_dim), the sequences' tokens back to back as query_start (num_seqs + 1,
    int32 prefix sums) says; context_lens (num_seqs,) counts each sequence's cached tokens with this
    step's; tiles (num_tiles, 2) int32 lists (sequence, first query) per block_q query tokens (built
    once per step on the host: attention.varlen_tiles). Writes rows 0..query_start[-1] of `out` (a new
    tensor like q when None); other rows are left as they are.
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    _, block_size, kv_heads, _ = k_cache.shape
    group = num_heads // kv_heads
    heads_per = min(triton.next_power_of_2(group), max(1, VARLEN_MAX_ROWS // block_q))
    parts = triton.cdiv(group, heads_per)
    out = torch.empty_like(q) if out is None else out
    if tiles.shape[0] == 0:
        return out
    _paged_varlen_kernel[(tiles.shape[0], kv_heads * parts)](
        q, k_cache, v_cache, out, block_tables, context_lens, query_start, tiles, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, HEADS_PER=heads_per, PARTS=parts, BLOCK_Q=block_q, HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, TOKENS=VARLEN_TOKENS, **pdl.launch_options(q.device),
    )  # fmt: skip
    return out


@triton.jit
def _add_rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, eps, N, stride_x, stride_r,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)  # the norm weight: no wait needed
    if USE_PDL:  # x and the residual are earlier kernels' outputs
        tl.extra.cuda.gdc_wait()
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        x = (
            x.to(tl.float32) + tl.load(res_ptr + row * stride_r + cols, mask=ok, other=0.0).to(tl.float32)
        ).to(x.dtype)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    tl.store(res_out_ptr + row * N + cols, x, mask=ok)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, axis=0) / N + eps)
    normed = (xf * rstd).to(x.dtype).to(tl.float32)
    tl.store(out_ptr + row * N + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=ok)


def add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(x + residual) * weight, x + residual) for x (num_tokens, dim), as RMSNorm.forward."""
    num_tokens, dim = x.shape
    out = torch.empty_like(x)
    summed = torch.empty_like(x)
    res = residual if residual is not None else x
    _add_rmsnorm_kernel[(num_tokens,)](
        x, res, weight, out, summed, eps, dim, x.stride(0), res.stride(0),
        HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(dim), **pdl.launch_options(x.device),
    )  # fmt: skip
    return out, summed


@triton.jit
def _qk_norm_rope_write_kernel(
    qkv_ptr, pos_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, slot_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr,
    eps, stride_t, stride_qo_t, stride_qo_h, stride_slot, stride_pos,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_NORM: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0)
    head = tl.program_id(1)
    half = HEAD_DIM // 2
    d = tl.arange(0, HEAD_DIM // 2)
    is_q = head < NUM_HEADS
    if HAS_NORM:  # the q/k norm weights: loaded before the wait
        if is_q:
            w1 = tl.load(qw_ptr + d).to(tl.float32)
            w2 = tl.load(qw_ptr + half + d).to(tl.float32)
        else:
            w1 = tl.load(kw_ptr + d).to(tl.float32)
            w2 = tl.load(kw_ptr + half + d).to(tl.float32)
    if USE_PDL:  # qkv, the positions and the slots are earlier kernels' outputs
        tl.extra.cuda.gdc_wait()
    pos = tl.load(pos_ptr + token * stride_pos)
    cos = tl.load(cos_ptr + pos * half + d)
    sin = tl.load(sin_ptr + pos * half + d)
    col = tl.where(is_q, head * HEAD_DIM, NUM_HEADS * HEAD_DIM + (head - NUM_HEADS) * HEAD_DIM)
    base = qkv_ptr + token * stride_t + col
    x1 = tl.load(base + d)
    x2 = tl.load(base + half + d)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    if HAS_NORM:
        rstd = tl.rsqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / HEAD_DIM + eps)
        x1 = (x1 * rstd).to(dtype).to(tl.float32) * w1
        x2 = (x2 * rstd).to(dtype).to(tl.float32) * w2
    o1 = (x1 * cos - x2 * sin).to(dtype)
    o2 = (x2 * cos + x1 * sin).to(dtype)
    # (each branch names its own variables: compiled Triton wants one type per name across branches)
    if is_q:
        q_dst = q_out_ptr + token * stride_qo_t + head * stride_qo_h
        tl.store(q_dst + d, o1)
        tl.store(q_dst + half + d, o2)
    else:
        kv_head = head - NUM_HEADS
        slot = tl.load(slot_ptr + token * stride_slot).to(tl.int64)
        cache_offset = slot * (NUM_KV_HEADS * HEAD_DIM) + kv_head * HEAD_DIM
        tl.store(k_cache_ptr + cache_offset + d, o1)
        tl.store(k_cache_ptr + cache_offset + half + d, o2)
        v_src = qkv_ptr + token * stride_t + (NUM_HEADS + NUM_KV_HEADS) * HEAD_DIM + kv_head * HEAD_DIM
        tl.store(v_cache_ptr + cache_offset + d, tl.load(v_src + d))
        tl.store(v_cache_ptr + cache_offset + half + d, tl.load(v_src + half + d))


def qk_norm_rope_write(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    q_norm_weight: torch.Tensor | None,
    k_norm_weight: torch.Tensor | None,
    eps: float,
    slot_mapping: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    num_heads: int,
) -> torch.Tensor:
    """qkv (num_tokens, (heads + 2 kv_heads) * head_dim) -> rotated q (num_tokens, heads, head_dim).

    Rotated, normed k and v go straight into the caches (contiguous, (blocks, block_size, kv_heads,
    head_dim)) at slot_mapping; cos/sin come from float32 tables (max_positions, head_dim // 2).
    positions and slot_mapping may be strided views (the decode step slices them out of one packed tensor).
    """
    num_tokens = qkv.shape[0]
    _, _, kv_heads, head_dim = k_cache.shape
    q = torch.empty(num_tokens, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    has_norm = q_norm_weight is not None and k_norm_weight is not None
    qw = q_norm_weight if q_norm_weight is not None else cos_cache
    kw = k_norm_weight if k_norm_weight is not None else cos_cache
    _qk_norm_rope_write_kernel[(num_tokens, num_heads + kv_heads)](
        qkv, positions, cos_cache, sin_cache, qw, kw, slot_mapping, q, k_cache, v_cache,
        eps, qkv.stride(0), q.stride(0), q.stride(1), slot_mapping.stride(0), positions.stride(0),
        NUM_HEADS=num_heads, NUM_KV_HEADS=kv_heads, HEAD_DIM=head_dim, HAS_NORM=has_norm,
        **pdl.launch_options(qkv.device),
    )  # fmt: skip
    return q


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, N, stride_x, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < N
    gate = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    up = tl.load(x_ptr + row * stride_x + N + cols, mask=ok, other=0.0)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + row * N + cols, (act * up.to(tl.float32)).to(gate.dtype), mask=ok)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """x (num_tokens, 2 * n) = [gate | up] -> silu(gate) * up, (num_tokens, n)."""
    num_tokens, width = x.shape
    n = width // 2
    out = torch.empty(num_tokens, n, dtype=x.dtype, device=x.device)
    block = 1024
    _silu_mul_kernel[(num_tokens, triton.cdiv(n, block))](
        x, out, n, x.stride(0), BLOCK=block, **pdl.launch_options(x.device)
    )
    return out


@triton.jit
def _skinny_matmul_kernel(
    x_ptr, w_ptr, out_ptr, M, N, stride_xm, stride_wn, stride_om, K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """out[:M, cols] = x[:M] @ w[cols].T for one block of BLOCK_N output columns, streaming w once.

    K is a compile-time constant (a model has one hidden size); K % BLOCK_K == 0 (checked by the caller).
    With USE_PDL the first weight tile loads before gdc_wait (weights are never written during a step)
    and the hidden rows, the previous kernel's output, after it; the loop then starts at the second tile.
    """
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_M)
    col_ok = cols < N
    row_ok = rows < M
    ks = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows[:, None] * stride_xm
    w_rows = w_ptr + cols[:, None].to(tl.int64) * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if USE_PDL:
        w_first = tl.load(w_rows + ks[None, :], mask=col_ok[:, None], other=0.0)
        tl.extra.cuda.gdc_wait()
        x_first = tl.load(x_rows + ks[None, :], mask=row_ok[:, None], other=0.0)
        acc += tl.dot(x_first, tl.trans(w_first))
    for k0 in range(USE_PDL * BLOCK_K, K, BLOCK_K):
        w = tl.load(w_rows + (k0 + ks)[None, :], mask=col_ok[:, None], other=0.0)
        x = tl.load(x_rows + (k0 + ks)[None, :], mask=row_ok[:, None], other=0.0)
        acc += tl.dot(x, tl.trans(w))
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    out = acc.to(w_ptr.dtype.element_ty).to(out_ptr.dtype.element_ty)  # rounded as the weights' dtype
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], out, mask=row_ok[:, None] & col_ok[None, :])


SKINNY_BLOCK_N, SKINNY_BLOCK_K = 64, 256


def skinny_block_k(k: int) -> int:
    """The widest power-of-two K block (16..SKINNY_BLOCK_K) dividing k, or 0 when 16 does not divide it."""
    block = SKINNY_BLOCK_K
    while block >= 16 and k % block:
        block //= 2
    return block if block >= 16 else 0


def skinny_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """hidden (m, k) @ weight (vocab, k).T -> float32 logits (m, vocab), rounded to the weight dtype first.

    For the LM head of a decode step (m <= 16): a vocabulary-sized weight streamed once at about the copy
    bandwidth, the float32 logits stored by the same kernel (no separate cast). Measured on an H100 for
    qwen3-0.6b-shape: 102 us vs cuBLAS's 111 us plus the cast (benchmarks/skinny_gemm.py). For the
    per-layer projections cuBLAS is faster inside a graph (4-7 us each), so they stay with cuBLAS.
    """
    m = hidden.shape[0]
    n, k = weight.shape
    if m > SKINNY_MAX_ROWS:
        raise ValueError(f"skinny_logits takes at most {SKINNY_MAX_ROWS} rows, got {m}")
    block_k = skinny_block_k(k)
    if hidden.shape[1] != k or not block_k or hidden.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError(
            f"skinny_logits: hidden {tuple(hidden.shape)} does not fit weight {tuple(weight.shape)} "
            "(contiguous rows, width a multiple of 16)"
        )
    out = torch.empty(m, n, dtype=torch.float32, device=hidden.device)
    _skinny_matmul_kernel[(triton.cdiv(n, SKINNY_BLOCK_N),)](
        hidden, weight, out, m, n, hidden.stride(0), weight.stride(0), out.stride(0), K=k,
        BLOCK_M=SKINNY_MAX_ROWS, BLOCK_N=SKINNY_BLOCK_N, BLOCK_K=block_k, num_warps=4, num_stages=4,
        **pdl.launch_options(hidden.device),
    )  # fmt: skip
    return out
