"""Column- and row-parallel projections: plain nn.Linear layers holding this rank's slice.

A column-parallel projection (QKV, gate/up) holds the rows of this rank's heads or MLP rows and needs
no collective: its output feeds rank-local work. A row-parallel one (O, down) holds the matching input
columns, so each rank computes a partial sum that the caller all-reduces (ParallelGroup.all_reduce)
before the residual add; its bias lives on rank 0 alone, so the sum adds it once. Both stay nn.Linear,
so every fused kernel that takes a Linear (skinny GEMV, norm + projection) serves a shard unchanged,
and on one rank they are exactly the layers of the single-GPU model.
"""

from __future__ import annotations

from torch import nn

from graphrun.llm.parallel.shards import ShardLayout


def column_parallel_linear(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    """A projection whose out_features are this rank's rows (already divided by the caller's layout)."""
    return nn.Linear(in_features, out_features, bias=bias)


def row_parallel_linear(in_features: int, out_features: int, bias: bool, layout: ShardLayout) -> nn.Linear:
    """A projection whose in_features are this rank's columns; its output is a partial sum to all-reduce.
    The bias, if any, is held by the rank that adds it (layout.holds_row_bias)."""
    return nn.Linear(in_features, out_features, bias=bias and layout.holds_row_bias)
