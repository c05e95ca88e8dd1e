"""The attention backend: which kernels store a step's K/V and attend, behind one interface.

A model never branches on the kernel. Each attention layer asks its backend to normalise, rotate and
store this step's keys and values (`store_qkv`), then calls an `AttentionOp`, the leaf module that
reads the step's metadata and attends. Two backends:
- `TorchAttentionBackend`: the reference ops of attention.py (CPU, CI, or CUDA with Triton disabled);
- `TritonAttentionBackend`: one fused kernel for norm + rotary + cache write, the paged decode kernel,
  and one launch for a prefill or mixed step's attention (the varlen kernel).
`select_attention_backend` chooses once, when a model is built, from the device and whether Triton is
available and allowed (GRAPHRUN_DISABLE_TRITON, read in envvars.py).

AttentionOp is the one module whose work depends on per-step host metadata (prefill chunk lengths), so
it is where a PIECEWISE capture splits the model: everything around it is fixed-shape per token count.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from graphrun.llm.kernels import kernel_ops, triton_available
from graphrun.llm.layers.attention import (
    VARLEN_BLOCK_Q,
    AttentionMetadata,
    causal_self_attention,
    decode_attention_reference,
    varlen_attention,
    varlen_tiles,
    write_kv,
)
from graphrun.llm.layers.norm import RMSNorm
from graphrun.llm.layers.rotary import Rope, RotaryEmbedding, apply_rotary
from graphrun.llm.transfer import to_device

log = logging.getLogger(__name__)

KVCache = tuple[torch.Tensor, torch.Tensor]  # k, v: each (num_blocks, block_size, num_kv_heads, head_dim)


@dataclass(frozen=True, slots=True)
class HeadShape:
    """The attention heads of a layer: query heads, key/value heads (grouped-query), and their width."""

    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True, slots=True)
class QKNorms:
    """Qwen3's per-head RMSNorms on q and k (the fused kernel takes their weights and q_norm's epsilon)."""

    q_norm: RMSNorm
    k_norm: RMSNorm


class AttentionBackend(ABC):
    """Kernels for one model's attention: rotary inputs, K/V store, decode attention; the dispatch on the
    step's kind (fresh prefill, decode, varlen prefill/mixed) is shared."""

    name: ClassVar[str]

    @abstractmethod
    def rope(self, rotary: RotaryEmbedding, positions: torch.Tensor, dtype: torch.dtype) -> Rope:
        """The step's rotary inputs, built once and shared by every layer."""

    @abstractmethod
    def store_qkv(
        self,
        qkv: torch.Tensor,
        heads: HeadShape,
        norms: QKNorms | None,
        rope: Rope,
        slot_mapping: torch.Tensor,
        kv_cache: KVCache,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """qkv_proj's output (num_tokens, (num_heads + 2 * num_kv_heads) * head_dim) -> (q, k, v), each
        (num_tokens, heads, head_dim), normed and rotated; k and v are written to their cache slots.
        k and v are None when a fused kernel wrote them straight to the cache (read them back there)."""

    @abstractmethod
    def decode(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """One query token per sequence over its cache: (num_seqs, num_heads, head_dim), capturable."""

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None,
        v: torch.Tensor | None,
        kv_cache: KVCache,
        meta: AttentionMetadata,
        scale: float,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """This step's attention output (num_tokens, num_heads, head_dim); K/V already in the cache.

        out: a buffer of at least num_tokens rows that receives the result (rows past it are left as
        they are), returned whole; a piecewise replay passes the next segment's static input."""
        k_cache, v_cache = kv_cache
        if meta.causal_fresh:
            if k is None or v is None:  # this step's K/V, as the fused kernel wrote them to the cache
                k = k_cache.flatten(0, 1).index_select(0, meta.slot_mapping)
                v = v_cache.flatten(0, 1).index_select(0, meta.slot_mapping)
            return _into(causal_self_attention(q, k, v, scale), out)
        if meta.is_decode:
            return _into(self.decode(q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale), out)
        return self.varlen(q, k_cache, v_cache, meta, scale, out)

    def varlen(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A prefill or mixed step's attention (eager: it reads host metadata): the reference loops over
        the sequences, the decode rows in one call of this backend's decode kernel."""
        return _into(varlen_attention(q, k_cache, v_cache, meta, scale, self.decode), out)


def _into(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """result, or out with result copied into its leading rows."""
    if out is None:
        return result
    out[: result.shape[0]].copy_(result)
    return out


class TorchAttentionBackend(AttentionBackend):
    """The reference ops: separate norm, rotary and cache write; decode attention over whole tables."""

    name = "torch"

    def rope(self, rotary: RotaryEmbedding, positions: torch.Tensor, dtype: torch.dtype) -> Rope:
        cos, sin = rotary(positions, dtype)  # gathered and cast once per step, not once per layer
        return Rope(positions, rotary.cos_cache, rotary.sin_cache, cos, sin)

    def store_qkv(
        self,
        qkv: torch.Tensor,
        heads: HeadShape,
        norms: QKNorms | None,
        rope: Rope,
        slot_mapping: torch.Tensor,
        kv_cache: KVCache,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        assert rope.cos is not None and rope.sin is not None
        q_size, kv_size = heads.num_heads * heads.head_dim, heads.num_kv_heads * heads.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, heads.num_heads, heads.head_dim)  # (num_tokens, num_heads, head_dim)
        k = k.view(-1, heads.num_kv_heads, heads.head_dim)  # (num_tokens, num_kv_heads, head_dim)
        v = v.view(-1, heads.num_kv_heads, heads.head_dim)
        if norms is not None:
            q, k = norms.q_norm.normalize(q), norms.k_norm.normalize(k)
        q, k = apply_rotary(q, rope.cos, rope.sin), apply_rotary(k, rope.cos, rope.sin)
        write_kv(kv_cache[0], kv_cache[1], k, v, slot_mapping)
        return q, k, v

    def decode(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        return decode_attention_reference(q, k_cache, v_cache, block_tables, context_lens, scale)


class TritonAttentionBackend(AttentionBackend):
    """The fused kernels (kernels/triton_ops.py): norm + rotary + cache write in one, paged decode."""

    name = "triton"

    def rope(self, rotary: RotaryEmbedding, positions: torch.Tensor, dtype: torch.dtype) -> Rope:
        return Rope(positions, rotary.cos_cache, rotary.sin_cache)  # the kernel reads the float32 tables

    def store_qkv(
        self,
        qkv: torch.Tensor,
        heads: HeadShape,
        norms: QKNorms | None,
        rope: Rope,
        slot_mapping: torch.Tensor,
        kv_cache: KVCache,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        q_w = norms.q_norm.weight if norms is not None else None
        k_w = norms.k_norm.weight if norms is not None else None
        eps = norms.q_norm.eps if norms is not None else 0.0
        q: torch.Tensor = kernel_ops().qk_norm_rope_write(
            qkv, rope.positions, rope.cos_cache, rope.sin_cache, q_w, k_w, eps,
            slot_mapping, kv_cache[0], kv_cache[1], heads.num_heads,
        )  # fmt: skip
        return q, None, None

    def decode(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        out: torch.Tensor = kernel_ops().paged_decode_attention(
            q, k_cache, v_cache, block_tables, context_lens, scale
        )
        return out

    def varlen(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Every sequence's rows in one launch of the varlen kernel, over the step's tile list (built once
        per step by the scheduler; here when the metadata came without one), written straight to out."""
        assert meta.query_start is not None and meta.query_start_host is not None
        tiles = meta.q_tiles
        if tiles is None:
            tiles = to_device(varlen_tiles(meta.query_start_host), q.device, torch.int32).view(-1, 2)
        result: torch.Tensor = kernel_ops().paged_varlen_attention(
            q, k_cache, v_cache, meta.block_tables, meta.context_lens, meta.query_start, tiles,
            VARLEN_BLOCK_Q, scale, out,
        )  # fmt: skip
        return result


def select_attention_backend(device: torch.device | str) -> AttentionBackend:
    """Triton on CUDA when it imports and is not disabled (GRAPHRUN_DISABLE_TRITON); else the torch ops."""
    backend: AttentionBackend
    backend = TritonAttentionBackend() if triton_available(device) else TorchAttentionBackend()
    log.debug("attention backend for %s: %s", device, backend.name)
    return backend


class AttentionOp(nn.Module):
    """The attention of one layer as a leaf module: (q, k, v, cache, metadata) -> output.

    It holds no weights. Its forward is the only part of a layer that reads per-step host metadata, so
    it is where a PIECEWISE capture splits the model (the segments around it are captured).
    """

    def __init__(self, backend: AttentionBackend, scale: float) -> None:
        super().__init__()
        self.backend = backend
        self.scale = scale

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None,
        v: torch.Tensor | None,
        kv_cache: KVCache,
        meta: AttentionMetadata,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q: (num_tokens, num_heads, head_dim); k, v: this step's keys/values, already in kv_cache (None
        where only the cache holds them) -> (num_tokens, num_heads, head_dim); with out (at least
        num_tokens rows), written to its leading rows and out returned."""
        return self.backend.attend(q, k, v, kv_cache, meta, self.scale, out)
