"""RMSNorm, with the residual add fused into the same call.

Every decoder layer does `residual = x + residual; x = norm(residual)` twice. Keeping the add and the
norm in one function means a single fused kernel can later replace both without touching the model.
Numerics follow Hugging Face (Llama, Qwen3): normalise in float32, cast back to the input dtype, then
scale by the weight, so logits match transformers in bf16 as well as fp32.
"""

from __future__ import annotations

import torch
from torch import nn

from graphrun.llm.kernels import kernel_ops, triton_enabled


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, optionally adding a residual first."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # (dim,)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim) in x's dtype; statistics in float32."""
        xf = x.float()
        variance = xf.pow(2).mean(dim=-1, keepdim=True)
        return self.weight * (xf * torch.rsqrt(variance + self.eps)).to(x.dtype)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (norm(x + residual), x + residual); with no residual, (norm(x), x).

        The second value is the running residual stream the next block adds its output to.
        """
        if x.dim() == 2 and triton_enabled(x):  # one fused kernel instead of six
            out: tuple[torch.Tensor, torch.Tensor] = kernel_ops().add_rmsnorm(
                x, residual, self.weight, self.eps
            )
            return out
        summed = x if residual is None else x + residual  # (num_tokens, dim)
        return self.normalize(summed), summed

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"
