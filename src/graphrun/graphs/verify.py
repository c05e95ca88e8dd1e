"""Checking a captured graph against eager: fresh random inputs like the example, dtype tolerances.

Random inputs follow the example's statistics (float mean/std, integer range), so index-like inputs
stay valid indices and a frozen branch or a stale address shows up as a mismatch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# (rtol, atol) per dtype: replay runs the same kernels as eager, so these are loose on purpose only for
# low-precision types where a different kernel choice per shape can change rounding.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


def random_like(example: torch.Tensor, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """A fresh tensor of `shape` drawn to resemble `example` (never all zeros for float inputs)."""
    device = example.device
    if example.dtype == torch.bool:
        return torch.rand(shape, generator=generator).lt(0.5).to(device)
    if example.is_floating_point():
        ex = example.detach().float()
        std = float(ex.std()) if ex.numel() > 1 else 1.0
        mean = float(ex.mean()) if ex.numel() else 0.0
        std = std if std > 0 and std == std else 1.0
        out = torch.randn(shape, generator=generator) * std + mean
        return out.to(device=device, dtype=example.dtype)
    if example.is_complex():
        raise TypeError("complex inputs are not supported by verification; pass verify=False")
    lo = int(example.min()) if example.numel() else 0
    hi = int(example.max()) if example.numel() else 1
    return torch.randint(lo, hi + 1, tuple(shape), generator=generator).to(device=device, dtype=example.dtype)


def mismatch(
    got: torch.Tensor, want: torch.Tensor, tolerance: tuple[float, float] | None = None
) -> str | None:
    """None if `got` matches `want` within the dtype tolerance, else a one-line description."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"shape/dtype {tuple(got.shape)}:{got.dtype} != eager {tuple(want.shape)}:{want.dtype}"
    if not got.is_floating_point():
        bad = int((got != want).sum())
        return None if bad == 0 else f"{bad} of {got.numel()} elements differ from eager"
    rtol, atol = tolerance or TOLERANCES.get(got.dtype, (1e-4, 1e-5))
    g, w = got.double(), want.double()
    if torch.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
        return None
    diff = (g - w).abs().nan_to_num(float("inf"))
    return f"max abs diff {float(diff.max()):.3g} > atol {atol} + rtol {rtol} (vs eager)"
