"""The example policy's transformer pieces: attention over heads, a self-attention block, an expert layer.

Plain PyTorch, capture-friendly: fixed shapes, no host reads, no data-dependent control flow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Scaled dot-product attention of (B, Tq, W) queries over (B, Tk, W) keys/values, split into heads."""
    b, tq, w = q.shape
    tk = k.shape[1]
    q = q.view(b, tq, heads, w // heads).transpose(1, 2)  # (B, heads, Tq, W / heads)
    k = k.view(b, tk, heads, w // heads).transpose(1, 2)
    v = v.view(b, tk, heads, w // heads).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, tq, w)


class MLP(nn.Module):
    """Two linear layers with a tanh-GELU between, 4x wide."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class SelfBlock(nn.Module):
    """Pre-norm self-attention and MLP, each with a residual (the prefix encoder's layer)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.out(attend(q, k, v, self.heads))
        return x + self.mlp(self.norm2(x))


class ExpertLayer(nn.Module):
    """Self-attention over the action tokens, cross-attention to the prefix's keys/values, MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.block = SelfBlock(width, heads)
        self.norm = nn.LayerNorm(width)
        self.query = nn.Linear(width, width)
        self.cross_out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        # x: (B, horizon, W); key, value: (B, prefix_len, W)
        b = self.block
        q, k, v = b.qkv(b.norm1(x)).chunk(3, dim=-1)
        x = x + b.out(attend(q, k, v, b.heads))
        x = x + self.cross_out(attend(self.query(self.norm(x)), key, value, b.heads))
        return x + b.mlp(b.norm2(x))
