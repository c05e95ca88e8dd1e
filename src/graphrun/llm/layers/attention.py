"""Paged attention: the KV-cache layout and per-step metadata every model layer and kernel agrees on.

Cache layout, per layer: k_cache and v_cache of shape (num_blocks, block_size, num_kv_heads, head_dim).
A token's K/V lives at flat slot `block * block_size + offset`. A sequence's blocks are listed in its row
of `block_tables`. Decode is designed for capture: all metadata are static tensors of fixed shape
(num_seqs rows, max_blocks_per_seq columns); writes go by index; nothing reads metadata on the host.

This module holds the metadata and the torch reference ops (CPU and GPU); which kernels a model runs is
the attention backend's choice (attention_backend.py), and the Triton decode kernel is checked against
these ops.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from torch.nn.attention.bias import CausalBias


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """Where this step's tokens write their K/V and what each sequence attends to.

    Decode (one new token per sequence) has query_start None; prefill/mixed steps list, per sequence, its
    slice of the flat token batch in query_start and run eager. Frozen: derive with dataclasses.replace.
    """

    slot_mapping: torch.Tensor  # (num_tokens,) int64: cache slot each new token's K/V is written to
    block_tables: torch.Tensor  # (num_seqs, max_blocks_per_seq) int32: cache blocks per sequence, 0-padded
    context_lens: torch.Tensor  # (num_seqs,) int32: tokens in the cache per sequence, this step's included
    query_start: torch.Tensor | None = (
        None  # (num_seqs + 1,) int32 prefix sums of query lengths; None: decode
    )
    query_start_host: list[int] | None = None  # the same on the host (prefill runs eager and loops on it)
    context_lens_host: list[int] | None = None  # the same on the host (prefill only)
    # one sequence whose tokens all start at position 0 this step (a fresh prefill, padded at the end):
    # attention is causal over this step's own K/V, no cache read, no host metadata (capturable)
    causal_fresh: bool = False
    # a mixed step run eager (engine.py): its first num_decode sequences have one query token each and
    # are served by the decode kernel in one call; the prompt chunks after them by varlen attention
    num_decode: int = 0
    # (num_tiles, 2) int32: (sequence, first query) per VARLEN_BLOCK_Q query tokens of a prefill or mixed
    # step (varlen_tiles), built once per step for the one-launch varlen kernel; None: built on demand
    q_tiles: torch.Tensor | None = None

    @property
    def is_decode(self) -> bool:
        """One query token per sequence over its cache (capturable: no host metadata)."""
        return self.query_start is None and not self.causal_fresh

    def chunks(self) -> AttentionMetadata:
        """The metadata of the sequences after the first num_decode ones, their tokens renumbered from 0."""
        d = self.num_decode
        assert self.query_start_host is not None and self.context_lens_host is not None
        base = self.query_start_host[d]
        return replace(
            self,
            slot_mapping=self.slot_mapping[base:],
            block_tables=self.block_tables[d:],
            context_lens=self.context_lens[d:],
            query_start=None,
            query_start_host=[x - base for x in self.query_start_host[d:]],
            context_lens_host=self.context_lens_host[d:],
            num_decode=0,
        )


VARLEN_BLOCK_Q = 16  # query tokens per program of the varlen kernel (kernels/triton_ops.py)


def varlen_tiles(query_start_host: list[int]) -> list[tuple[int, int]]:
    """(sequence, first query within it) of each tile of VARLEN_BLOCK_Q query tokens: the varlen
    kernel's work list, one program per tile and kv head. A decode row is one tile of one token."""
    return [
        (seq, first)
        for seq, (begin, end) in enumerate(itertools.pairwise(query_start_host))
        for first in range(0, end - begin, VARLEN_BLOCK_Q)
    ]


DecodeAttention = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor
]


def write_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store new keys/values (num_tokens, num_kv_heads, head_dim) at their slots, in place."""
    num_blocks, block_size, kv_heads, head_dim = k_cache.shape
    k_cache.view(num_blocks * block_size, kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    v_cache.view(num_blocks * block_size, kv_heads, head_dim).index_copy_(0, slot_mapping, v)


def decode_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query token per sequence over its cached tokens; static shapes, no host reads (capturable).

    q: (num_seqs, num_heads, head_dim) -> (num_seqs, num_heads, head_dim). Reads all max_blocks_per_seq
    blocks and masks past context_lens: simple and capturable, but not bandwidth-optimal (the Triton
    kernel reads only filled blocks).
    """
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    max_blocks = block_tables.shape[1]
    blocks = block_tables.long()
    k = k_cache[blocks].reshape(num_seqs, max_blocks * block_size, kv_heads, head_dim)
    v = v_cache[blocks].reshape(num_seqs, max_blocks * block_size, kv_heads, head_dim)
    positions = torch.arange(max_blocks * block_size, device=q.device)
    valid = positions[None, :] < context_lens[:, None].long()  # (num_seqs, max_ctx)
    group = num_heads // kv_heads
    qg = q.view(num_seqs, kv_heads, group, head_dim).float()
    scores = torch.einsum("skgd,stkd->skgt", qg, k.float()) * scale  # (seqs, kv_heads, group, ctx)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("skgt,stkd->skgd", probs, v.float())
    return out.reshape(num_seqs, num_heads, head_dim).to(q.dtype)


def prefill_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Causal attention for each sequence's new tokens over its whole cached context (chunked prefill).

    q: (num_tokens, num_heads, head_dim), the sequences' new tokens back to back. Runs eager: it loops over
    sequences on the host using query_start_host / context_lens_host.
    """
    assert meta.query_start_host is not None and meta.context_lens_host is not None
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    for i, ctx in enumerate(meta.context_lens_host):
        start, end = meta.query_start_host[i], meta.query_start_host[i + 1]
        num_blocks = (ctx + block_size - 1) // block_size
        blocks = meta.block_tables[i, :num_blocks].long()
        k = k_cache[blocks].reshape(-1, kv_heads, head_dim)[:ctx]
        v = v_cache[blocks].reshape(-1, kv_heads, head_dim)[:ctx]
        q_len = end - start
        if q_len == ctx:  # a fresh prompt: the same computation as the captured prefill graph
            out[start:end] = causal_self_attention(q[start:end], k, v, scale)
            continue
        # query j sits at position ctx - q_len + j and sees keys 0..that position: causal, aligned to the
        # bottom right, which the fused SDPA kernels take without a materialised mask
        mask = _lower_right(q_len, ctx)
        out[start:end] = _sdpa(q[start:end], k, v, mask, scale, num_heads // kv_heads)
    return out


def _lower_right(q_len: int, ctx: int) -> CausalBias:
    """torch's lower-right causal bias (a CausalBias), imported on first use: its module imports Triton,
    which a CPU-only process need not load (nor report leaks of at exit)."""
    from torch.nn.attention.bias import causal_lower_right

    return causal_lower_right(q_len, ctx)


def varlen_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    decode: DecodeAttention = decode_attention_reference,
) -> torch.Tensor:
    """A prefill or mixed step's attention: the leading single-token rows (meta.num_decode of them) in one
    call of the decode kernel, the prompt chunks after them per sequence (prefill_attention_reference).

    A mixed step carrying a large prompt chunk runs this eagerly instead of the decode graph, whose
    rows would each read the whole context again (engine.py).
    """
    d = meta.num_decode
    if d == 0:
        return prefill_attention_reference(q, k_cache, v_cache, meta, scale)
    head = decode(q[:d], k_cache, v_cache, meta.block_tables[:d], meta.context_lens[:d], scale)
    if d == q.shape[0]:
        return head
    tail = prefill_attention_reference(q[d:], k_cache, v_cache, meta.chunks(), scale)
    return torch.cat([head, tail])


def causal_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of one sequence's tokens (positions 0..n-1) over themselves; capturable.

    q: (n, heads, d), k and v: (n, kv_heads, d). Rows past the real tokens (padding) only ever see
    earlier rows' keys after every real row, so they never change a real row's output.
    """
    return _sdpa(q, k, v, None, scale, q.shape[1] // k.shape[1])


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: CausalBias | None, scale: float, group: int
) -> torch.Tensor:
    """(q_len, heads, d) over (ctx, kv_heads, d) with grouped-query heads, via SDPA; no mask: causal.

    The inputs get a batch dimension: with 3-D inputs SDPA takes its unfused math path (fp32 matmuls and
    a dozen kernels per call, measured: benchmarks/profile_mixed_step.py); 4-D reaches the fused kernels.
    """
    k = k.repeat_interleave(group, dim=1) if group > 1 else k
    v = v.repeat_interleave(group, dim=1) if group > 1 else v
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
    )
    return out.squeeze(0).transpose(0, 1)
