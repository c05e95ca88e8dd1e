"""The gated (SwiGLU) MLP of Llama and Qwen3, with gate and up fused into one projection.

One matmul of 2 * intermediate outputs instead of two halves the kernel launches, which is most of
the cost of a small-batch decode step; the checkpoint loader concatenates the two HF weights. Under
tensor parallelism intermediate_size is this rank's share: gate_up holds [gate rows; up rows] of the
shard (the fused layout per rank) and down's partial sums are all-reduced over the group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from graphrun.llm.kernels import kernel_ops, linear, linear_silu_mul, triton_enabled
from graphrun.llm.parallel.group import ParallelGroup
from graphrun.llm.parallel.linear import column_parallel_linear


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up computed by one Linear."""

    def __init__(self, hidden_size: int, intermediate_size: int, group: ParallelGroup | None = None) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size  # this rank's rows (all of them on one rank)
        self.group = group if group is not None else ParallelGroup.single()
        # rows [0, intermediate) are gate, rows [intermediate, 2 * intermediate) are up (column-parallel)
        self.gate_up_proj = column_parallel_linear(hidden_size, 2 * intermediate_size, bias=False)
        # row-parallel: bias-free, so no rank holds a bias
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(num_tokens, hidden) -> (num_tokens, hidden)."""
        return self.project_down(self.activation(x))

    def project_down(self, act: torch.Tensor) -> torch.Tensor:
        """(num_tokens, intermediate) -> (num_tokens, hidden), summed over the ranks."""
        return self.group.all_reduce(linear(act, self.down_proj))

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """silu(gate(x)) * up(x): (num_tokens, hidden) -> (num_tokens, intermediate)."""
        fused = linear_silu_mul(x, self.gate_up_proj)  # one kernel at decode sizes on CUDA, else None
        if fused is not None:
            return fused
        gate_up = self.gate_up_proj(x)  # (num_tokens, 2 * intermediate)
        if gate_up.dim() == 2 and triton_enabled(gate_up):
            out: torch.Tensor = kernel_ops().silu_mul(gate_up)
            return out
        gate, up = gate_up.chunk(2, dim=-1)  # each (num_tokens, intermediate)
        return F.silu(gate) * up
