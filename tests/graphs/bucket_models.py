"""Tiny encoder-like model for the bucket tests: embedding, masked attention, mean pool, per-token head."""

from __future__ import annotations

import math

import torch
from torch import nn

VOCAB = 32
HIDDEN = 16


class TinyEncoder(nn.Module):
    """input_ids (b, l), attention_mask (b, l) -> {"pooled": (b, hidden), "tokens": (b, l, 4)}.

    honour_mask=False: the pool averages over every position, padding included (not padding-safe).
    """

    def __init__(self, honour_mask: bool = True, max_len: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.honour_mask = honour_mask
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.pos = nn.Embedding(max_len, HIDDEN)
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.proj = nn.Linear(HIDDEN, HIDDEN)
        self.head = nn.Linear(HIDDEN, 4)
        self.num_heads = 2

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        b, seq = input_ids.shape
        x = self.embed(input_ids) + self.pos.weight[:seq]  # (b, l, hidden)
        q, k, v = self.qkv(x).view(b, seq, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (b, heads, l, l)
        scores = scores.masked_fill(attention_mask[:, None, None, :] == 0, -1e9)
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, seq, HIDDEN)
        h = x + self.proj(attn)
        if self.honour_mask:
            m = attention_mask[..., None].to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        else:
            pooled = h.mean(1)
        return {"pooled": pooled, "tokens": self.head(h)}


def encoder_inputs(batch: int, length: int, seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random token ids in 1..VOCAB-1 (0 is the pad id) and a mask of ones."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=gen)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones(batch, length, dtype=torch.long, device=device),
    }
