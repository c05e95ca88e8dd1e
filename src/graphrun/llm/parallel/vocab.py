"""The vocabulary split across ranks: an embedding that looks up its own rows, logits gathered whole.

Each rank holds layout.vocab_rows rows from layout.vocab_start. The embedding looks up the ids in its
range, writes zeros for the others, and all-reduces: every token's row comes from exactly one rank. The
LM head computes this rank's logits columns; gather_logits joins them so callers (the sampler) see the
full vocabulary, padding columns dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from graphrun.llm.parallel.group import ParallelGroup
from graphrun.llm.parallel.shards import ShardLayout


class VocabParallelEmbedding(nn.Embedding):
    """nn.Embedding over this rank's vocab_rows; forward returns the full embedding of every id."""

    def __init__(self, layout: ShardLayout, hidden_size: int, group: ParallelGroup) -> None:
        super().__init__(layout.vocab_rows, hidden_size)
        self.vocab_start = layout.vocab_start
        self.group = group

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(num_tokens,) full-vocabulary ids -> (num_tokens, hidden_size), identical on every rank."""
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.num_embeddings)
        rows = F.embedding(local.masked_fill(outside, 0), self.weight)  # (num_tokens, hidden)
        return self.group.all_reduce(rows.masked_fill(outside.unsqueeze(-1), 0.0))


def vocab_embedding(layout: ShardLayout, hidden_size: int, group: ParallelGroup) -> nn.Embedding:
    """The model's token embedding: the plain nn.Embedding on one rank, the vocab-parallel one on more."""
    if layout.parallel.is_single:
        return nn.Embedding(layout.vocab_size, hidden_size)
    return VocabParallelEmbedding(layout, hidden_size, group)


def gather_logits(logits: torch.Tensor, layout: ShardLayout, group: ParallelGroup) -> torch.Tensor:
    """(num_rows, vocab_rows) logits of this rank -> (num_rows, vocab_size), the same on every rank."""
    if layout.parallel.is_single:
        return logits
    return group.all_gather(logits)[:, : layout.vocab_size]
