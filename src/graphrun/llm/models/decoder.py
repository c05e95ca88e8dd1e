"""The decoder-only transformer of the Llama and Qwen3 families, over a paged KV cache.

Both families are one module: Qwen3 adds an RMSNorm per head on q and k (`qk_norm`), Llama 3.x adds
rope scaling, and either may carry attention biases. Tokens of all sequences in a step are one flat
batch of shape (num_tokens, ...); `AttentionMetadata` says where each writes its K/V and what it reads.
The attention kernels are the model's `AttentionBackend` (layers/attention_backend.py), fixed when it
is built. The decode path (meta.is_decode) is written for CUDA-graph capture: no host reads, no
data-dependent shapes, the cache written in place by index.

Built for one tensor-parallel rank (`ParallelGroup`), each layer holds that rank's heads and MLP rows
(parallel/shards.py): O and down produce partial sums that are all-reduced, the embedding and LM head
hold a slice of the vocabulary. On a single rank every collective is the identity and the modules are
those of the unsplit model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from graphrun.llm.config import ModelConfig
from graphrun.llm.kernels import kernel_ops, linear, norm_linear, skinny_enabled
from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.layers.attention_backend import (
    AttentionBackend,
    AttentionOp,
    HeadShape,
    KVCache,
    QKNorms,
    TorchAttentionBackend,
)
from graphrun.llm.layers.mlp import GatedMLP
from graphrun.llm.layers.norm import RMSNorm
from graphrun.llm.layers.rotary import Rope, RotaryEmbedding
from graphrun.llm.parallel.group import ParallelGroup
from graphrun.llm.parallel.linear import column_parallel_linear, row_parallel_linear
from graphrun.llm.parallel.shards import ShardLayout
from graphrun.llm.parallel.vocab import gather_logits, vocab_embedding


class SelfAttention(nn.Module):
    """Fused QKV projection, optional per-head q/k norm, rotary, paged attention, output projection,
    over this rank's heads (layout)."""

    def __init__(
        self, config: ModelConfig, backend: AttentionBackend, layout: ShardLayout, group: ParallelGroup
    ) -> None:
        super().__init__()
        self.heads = HeadShape(layout.num_heads, layout.num_kv_heads, config.head_dim)
        self.q_size = layout.num_heads * config.head_dim
        self.kv_size = layout.num_kv_heads * config.head_dim
        self.scale = config.head_dim**-0.5
        self.group = group
        # output rows: [q (num_heads * head_dim) | k (num_kv_heads * head_dim) | v (same)], this rank's heads
        self.qkv_proj = column_parallel_linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias
        )
        self.o_proj = row_parallel_linear(self.q_size, config.hidden_size, config.attention_bias, layout)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.norms = None if self.q_norm is None or self.k_norm is None else QKNorms(self.q_norm, self.k_norm)
        self.backend = backend
        self.attn = AttentionOp(backend, self.scale)

    def forward(
        self, qkv: torch.Tensor, rope: Rope, meta: AttentionMetadata, kv_cache: KVCache
    ) -> torch.Tensor:
        """qkv_proj's output (num_tokens, q_size + 2 * kv_size) -> (num_tokens, hidden); writes this
        step's K/V into kv_cache. The caller projects, so that it can fuse the norm into the product."""
        q, k, v = self.store(qkv, rope, meta.slot_mapping, kv_cache)
        out = self.attn(q, k, v, kv_cache, meta)  # (num_tokens, num_heads, head_dim)
        return self.project_out(out)

    def store(
        self, qkv: torch.Tensor, rope: Rope, slot_mapping: torch.Tensor, kv_cache: KVCache
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(q, k, v) normed and rotated, k and v written to their cache slots (the part before attention)."""
        return self.backend.store_qkv(qkv, self.heads, self.norms, rope, slot_mapping, kv_cache)

    def project_out(self, out: torch.Tensor) -> torch.Tensor:
        """Attention output (num_tokens, num_heads, head_dim) -> (num_tokens, hidden), summed over ranks."""
        return self.group.all_reduce(linear(out.reshape(-1, self.q_size), self.o_proj))


class DecoderLayer(nn.Module):
    """Pre-norm block: norm -> attention -> add -> norm -> MLP, with each add fused into the next norm."""

    def __init__(
        self, config: ModelConfig, backend: AttentionBackend, layout: ShardLayout, group: ParallelGroup
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SelfAttention(config, backend, layout, group)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = GatedMLP(config.hidden_size, layout.intermediate_size, group)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        rope: Rope,
        meta: AttentionMetadata,
        kv_cache: KVCache,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (this block's MLP output, residual stream before it); the caller adds the two."""
        q, k, v, residual = self.before_attention(hidden, residual, rope, meta.slot_mapping, kv_cache)
        out = self.self_attn.attn(q, k, v, kv_cache, meta)  # (num_tokens, num_heads, head_dim)
        return self.after_attention(out, residual)

    def before_attention(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        rope: Rope,
        slot_mapping: torch.Tensor,
        kv_cache: KVCache,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Norm, QKV projection, K/V store: (q, k, v, residual). Reads no per-step host metadata, so a
        PIECEWISE capture records it (llm/piecewise_model.py)."""
        qkv, residual = self._normed_linear(hidden, residual, self.input_layernorm, self.self_attn.qkv_proj)
        q, k, v = self.self_attn.store(qkv, rope, slot_mapping, kv_cache)
        return q, k, v, residual

    def after_attention(self, out: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output projection, norm, MLP: (this block's MLP output, residual stream before it)."""
        hidden = self.self_attn.project_out(out)
        act, residual = self._normed_linear(
            hidden, residual, self.post_attention_layernorm, self.mlp.gate_up_proj, silu_mul=True
        )
        return self.mlp.project_down(act), residual

    def _normed_linear(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        norm: RMSNorm,
        layer: nn.Linear,
        silu_mul: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(layer(norm(hidden + residual)) [SiLU-multiplied], hidden + residual): one kernel at decode
        sizes on CUDA (norm_linear), else the norm, then the projection."""
        fused = norm_linear(hidden, residual, norm.weight, norm.eps, layer, silu_mul)
        if fused is not None:
            return fused
        hidden, residual = norm(hidden, residual)
        return (self.mlp.activation(hidden) if silu_mul else linear(hidden, layer)), residual


class DecoderLM(nn.Module):
    """A Llama- or Qwen3-family causal LM: token ids and positions in, final hidden states out.

    attention_backend: the attention kernels (select_attention_backend picks them for a device); the
    torch reference ops by default. group: the tensor-parallel rank this model is built for (its
    `layout` says which heads, MLP rows and vocabulary rows it holds); one rank by default.
    """

    def __init__(
        self,
        config: ModelConfig,
        attention_backend: AttentionBackend | None = None,
        group: ParallelGroup | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        backend = attention_backend if attention_backend is not None else TorchAttentionBackend()
        self.attention_backend = backend
        self.group = group if group is not None else ParallelGroup.single()
        self.layout = layout = ShardLayout.from_model(config, self.group.config)
        self.embed_tokens = vocab_embedding(layout, config.hidden_size, self.group)
        self.rotary = RotaryEmbedding(config)
        self.layers = nn.ModuleList(
            DecoderLayer(config, backend, layout, self.group) for _ in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = column_parallel_linear(config.hidden_size, layout.vocab_rows, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the LM head when the config says so (again after moving the model)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: Sequence[KVCache],
    ) -> torch.Tensor:
        """input_ids, positions: (num_tokens,) -> hidden states (num_tokens, hidden_size).

        kv_caches holds one (k_cache, v_cache) pair per layer; this step's K/V are written into them.
        """
        if len(kv_caches) != len(self.layers):
            raise ValueError(
                f"got {len(kv_caches)} KV cache pairs for a model of {len(self.layers)} layers; "
                "pass one (k_cache, v_cache) pair per layer"
            )
        hidden = self.embed_tokens(input_ids)  # (num_tokens, hidden_size)
        rope: Rope = self.attention_backend.rope(self.rotary, positions, hidden.dtype)
        residual: torch.Tensor | None = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(hidden, residual, rope, meta, kv_cache)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(num_rows, hidden_size) -> (num_rows, vocab_size) float32 logits (rounded to the model dtype
        first, as lm_head(hidden).float() is); the whole vocabulary on every rank."""
        return gather_logits(self._local_logits(hidden), self.layout, self.group)

    def _local_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(num_rows, layout.vocab_rows) float32 logits of this rank's vocabulary rows."""
        if skinny_enabled(hidden) and self.lm_head.bias is None and hidden.shape[1] % 16 == 0:
            # one kernel streams the head and stores float32: no separate cast of the logits
            logits: torch.Tensor = kernel_ops().skinny_logits(hidden, self.lm_head.weight)
            return logits
        return self.lm_head(hidden).float()
