"""The bytes a decode step cannot avoid reading, part by part: the floor's numerator.

Shared by the step's floor (decode_report.py) and the per-class floors of the kernel profile
(decode_profile.py). Every count is the weight or cache bytes read once per step; nothing is cached
across steps (a model this size does not fit in L2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graphrun.llm.config import ModelConfig

__all__ = ["floor_bytes", "kv_bytes", "lm_head_bytes", "projection_bytes", "weight_bytes"]


def projection_bytes(config: ModelConfig, itemsize: int) -> int:
    """Bytes of every layer's q, k, v, o, gate, up and down projection weights (read once per step)."""
    q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    hidden, inter = config.hidden_size, config.intermediate_size
    per_layer = hidden * (q_size + 2 * kv_size) + q_size * hidden + 3 * hidden * inter
    return config.num_layers * per_layer * itemsize


def lm_head_bytes(config: ModelConfig, itemsize: int) -> int:
    """Bytes of the LM head's (vocab, hidden) weight (read once per step, tied to the embedding or not)."""
    return config.vocab_size * config.hidden_size * itemsize


def weight_bytes(config: ModelConfig, itemsize: int) -> int:
    """Bytes of every q, k, v, o, gate, up, down projection and of the LM head (read once per step)."""
    return projection_bytes(config, itemsize) + lm_head_bytes(config, itemsize)


def kv_bytes(config: ModelConfig, batch: int, context: float, itemsize: int) -> float:
    """Bytes of the K and V cache that `batch` sequences of `context` cached tokens each fill (all layers)."""
    return batch * context * config.num_layers * 2 * config.num_kv_heads * config.head_dim * itemsize


def floor_bytes(config: ModelConfig, batch: int, context: float, itemsize: int) -> float:
    """Bytes one decode step must read: weights, the batch's embedding rows, its filled KV cache."""
    embedding_rows = batch * config.hidden_size * itemsize
    return weight_bytes(config, itemsize) + embedding_rows + kv_bytes(config, batch, context, itemsize)
