"""Tiny models for the piecewise tests (CPU and GPU)."""

import torch
import torch.nn.functional as F
from torch import nn


class Gate(nn.Module):
    """The op the tests mark uncapturable (stands for anything with per-call host state)."""

    def forward(self, x):
        return torch.sigmoid(x) * x


class GatedMLP(nn.Module):
    """Linear -> Gate (marked) -> Linear: one split in the middle."""

    def __init__(self, dim=8, hidden=16):
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.gate = Gate()
        self.down = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.down(self.gate(self.up(x)))


class Block(nn.Module):
    """A pre-norm transformer block; attention through F.scaled_dot_product_attention."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):  # (batch, seq, dim)
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.norm2(x))


class ScaledByMax(nn.Module):
    """Reads a data-dependent scalar with .item() in the middle: FULL capture cannot take it."""

    def __init__(self, dim=8):
        super().__init__()
        self.a, self.b = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        h = torch.relu(self.a(x))
        scale = h.abs().amax().item()
        return self.b(h) / (scale + 1.0)


class HFEncoder(nn.Module):
    """A random-init BERT (transformers), returning the last hidden state."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            attn_implementation="sdpa",
        )
        self.bert = BertModel(config).eval()

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def untraceable(x):
    """Python control flow on tensor data: neither torch.fx nor torch.export can trace it."""
    if x.sum() > 0:
        return x * 2
    return x - 1


class Compact(nn.Module):
    """Keeps the rows whose first feature is positive: an output with a data-dependent row count."""

    def forward(self, x):
        return x[x[:, 0] > 0]


class CompactThenReduce(nn.Module):
    """A data-dependent shape in the middle; the output is batch-shaped again."""

    def __init__(self, dim=8):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.compact = Compact()

    def forward(self, x):
        h = self.a(x)
        return self.b(h) + self.c(self.compact(h)).sum(0)
