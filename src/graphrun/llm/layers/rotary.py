"""Rotary position embedding (the "rotate_half" layout of Llama and Qwen3 in transformers).

cos/sin for every position up to max_position_embeddings are computed once, in float32, at
construction, then gathered by a positions tensor: a lookup by index, with no host reads and no
data-dependent shapes, so it records into a CUDA graph. Frequencies follow transformers exactly
(default rope, and Llama 3.x "llama3" scaling), so logits match on the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from graphrun.llm.config import ModelConfig, UnsupportedModelError

ROPE_TYPES = ("default", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_type_of(rope_scaling: dict[str, Any] | None) -> str:
    """The scaling kind named by a HF rope_scaling dict ("default" when there is none)."""
    if not rope_scaling:
        return "default"
    return str(rope_scaling.get("rope_type", rope_scaling.get("type", "default")))


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """(head_dim // 2,) float32 inverse frequencies theta^(-2i/head_dim)."""
    # on the CPU explicitly: models are built under a meta-device context, and these values are needed
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    return 1.0 / (theta**exponents)


def llama3_inv_freq(inv_freq: torch.Tensor, rope_scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1 frequency scaling: slow down long wavelengths, blend the middle band, keep short ones.

    Wavelengths longer than original_len / low_freq_factor are divided by `factor`; shorter than
    original_len / high_freq_factor are kept; in between, interpolated linearly in original_len / wavelength.
    """
    missing = [key for key in _LLAMA3_KEYS if key not in rope_scaling]
    if missing:
        raise UnsupportedModelError(
            f"llama3 rope_scaling {rope_scaling} lacks {missing}; it needs {_LLAMA3_KEYS}"
        )
    factor = float(rope_scaling["factor"])
    low = float(rope_scaling["low_freq_factor"])
    high = float(rope_scaling["high_freq_factor"])
    original_len = float(rope_scaling["original_max_position_embeddings"])
    wavelength = 2 * math.pi / inv_freq
    long_band = wavelength > original_len / low
    short_band = wavelength < original_len / high
    scaled = torch.where(long_band, inv_freq / factor, inv_freq)
    smooth = (original_len / wavelength - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return torch.where(~long_band & ~short_band, blended, scaled)


def inv_freq_for(config: ModelConfig) -> torch.Tensor:
    """(head_dim // 2,) float32 inverse frequencies for a model config; unknown rope types are refused."""
    kind = rope_type_of(config.rope_scaling)
    inv_freq = default_inv_freq(config.head_dim, config.rope_theta)
    if kind == "default":
        return inv_freq
    if kind == "llama3":
        assert config.rope_scaling is not None
        return llama3_inv_freq(inv_freq, config.rope_scaling)
    raise UnsupportedModelError(
        f"rope_type {kind!r} (rope_scaling={config.rope_scaling}) is not supported; "
        f"graphrun implements {ROPE_TYPES}"
    )


@dataclass(frozen=True, slots=True)
class Rope:
    """A step's rotary inputs: positions and the float32 tables (fused kernel), or per-token cos/sin."""

    positions: torch.Tensor  # (num_tokens,)
    cos_cache: torch.Tensor  # (max_positions, head_dim // 2) float32
    sin_cache: torch.Tensor
    cos: torch.Tensor | None = None  # (num_tokens, 1, head_dim // 2) in the model dtype; torch path only
    sin: torch.Tensor | None = None


class RotaryEmbedding(nn.Module):
    """The cos/sin table for all positions, built once; `forward` gathers the rows of a step's positions."""

    cos_cache: torch.Tensor
    sin_cache: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.head_dim % 2:
            raise UnsupportedModelError(f"rotary embedding needs an even head_dim, got {config.head_dim}")
        self.inv_freq_values = inv_freq_for(config).tolist()  # host copy: rebuilding needs no device data
        self.max_positions = config.max_position_embeddings
        cos, sin = self._table(torch.device("cpu"))
        # (max_positions, head_dim // 2); not saved in state dicts (derived from the config)
        self.register_buffer("cos_cache", cos, persistent=False)
        self.register_buffer("sin_cache", sin, persistent=False)

    def _table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of position * inv_freq, float32, each (max_positions, head_dim // 2)."""
        inv_freq = torch.tensor(self.inv_freq_values, dtype=torch.float32, device=device)
        positions = torch.arange(self.max_positions, dtype=torch.float32, device=device)
        freqs = positions[:, None] * inv_freq[None, :]
        return freqs.cos(), freqs.sin()

    def reset_cache(self) -> None:
        """Rebuild the table in float32 on its current device: after `to_empty` left it uninitialised, or
        `module.to(dtype)` cast it. Call before any graph capture (the buffers are replaced)."""
        self.cos_cache, self.sin_cache = self._table(self.cos_cache.device)

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions (num_tokens,), each (num_tokens, 1, head_dim // 2) in dtype.

        Looked up and cast once per step, then shared by every layer's `apply_rotary`. Positions must be
        < max_position_embeddings (not checked: that would read device data on the host).
        """
        cos = self.cos_cache[positions].unsqueeze(1).to(dtype)
        return cos, self.sin_cache[positions].unsqueeze(1).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * [cos, cos] + rotate_half(x) * [sin, sin] in x's dtype, as transformers computes it.

    x: (num_tokens, heads, head_dim) -> same shape; cos, sin: (num_tokens, 1, head_dim // 2), already in
    x's dtype (RotaryEmbedding casts once per step; a cast here would run once per layer).
    """
    x1, x2 = x.chunk(2, dim=-1)  # each (num_tokens, heads, head_dim // 2)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
