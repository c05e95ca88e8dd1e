"""The gated (SwiGLU) MLP of Llama and Qwen3, with gate and up fused into one projection.

One matmul of 2 * intermediate outputs instead of two halves the kernel launches, which is most of
the cost of a small-batch decode step; the checkpoint loader concatenates the two HF weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from graphrun.llm.kernels import kernel_ops, linear, linear_silu_mul, triton_enabled


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up computed by one Linear."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.intermediate_size = intermediate_size
        # rows [0, intermediate) are gate, rows [intermediate, 2 * intermediate) are up
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(num_tokens, hidden) -> (num_tokens, hidden)."""
        return linear(self.activation(x), self.down_proj)

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
