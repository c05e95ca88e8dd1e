"""Fused GPU kernels (Triton) for the decode hot path, and the rule that picks them.

`triton_enabled(t)` is true for CUDA tensors when Triton imports and GRAPHRUN_DISABLE_TRITON is unset;
otherwise the model runs its torch reference ops (CPU, CI, debugging). Tests check each kernel against
its reference: on the GPU, and on the CPU through Triton's interpreter.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from graphrun.envvars import skinny_gemm_disabled, triton_disabled

SKINNY_MAX_ROWS = 16  # rows up to which the LM head uses skinny_logits instead of cuBLAS


@dataclass(frozen=True, slots=True)
class GemvConfig:
    """Tile of the skinny GEMV kernel (kernels/gemv.py): output columns and K elements per program."""

    block_n: int
    block_k: int
    num_warps: int


def gemv_config(m: int, n: int, k: int, silu_mul: bool = False) -> GemvConfig | None:
    """The GEMV tile for an (m, k) @ (n, k).T projection, or None where cuBLAS is faster.

    Measured per projection on an H200 for qwen3-0.6b-shape, each layer's weights distinct, inside one
    graph (benchmarks/skinny_gemv.py, benchmarks/results/experiments/skinny-gemv-nvidia-h200.json): at one
    row the GEMV wins every projection (QKV 4.6 vs 5.1 us, O 3.8 vs 12.8, gate/up with SiLU fused 6.1 vs
    7.5, down 4.5 vs 6.8); for outputs narrower than the input (O, down) it wins up to 2-4 rows, where
    cuBLAS picks a slow kernel for O (10.6 us at 2-4 rows); from 8 rows cuBLAS wins everywhere.
    """
    if m == 1:
        config = GemvConfig(2, 512, 2) if silu_mul else GemvConfig(*((1, 1024, 4) if n < k else (4, 512, 4)))
    elif m <= 4 and n < k and not silu_mul:
        config = GemvConfig(1, 1024, 4) if m <= 2 else GemvConfig(2, 512, 2)
    else:
        return None
    while k % config.block_k and config.block_k > 64:  # K must be a whole number of blocks
        config = GemvConfig(config.block_n * 2, config.block_k // 2, config.num_warps)
    return config if k % config.block_k == 0 else None


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_enabled(t: torch.Tensor) -> bool:
    """Whether the fused Triton kernels serve this tensor's device."""
    return t.is_cuda and not triton_disabled() and _triton_importable()


def triton_available(device: torch.device | str) -> bool:
    """Whether the fused Triton kernels can serve a device (chosen once, e.g. for the attention backend)."""
    return torch.device(device).type == "cuda" and not triton_disabled() and _triton_importable()


@functools.cache
def kernel_ops() -> ModuleType:
    """The kernels module, imported on first use (importing Triton is slow and needs no work at import)."""
    from graphrun.llm.kernels import triton_ops as module

    return module


@functools.cache
def gemv_ops() -> ModuleType:
    """The skinny GEMV kernels module, imported on first use (it imports Triton)."""
    from graphrun.llm.kernels import gemv as module

    return module


@functools.cache
def logprobs_ops() -> ModuleType:
    """The logprobs kernels module (pruned_logprobs), imported on first use (it imports Triton)."""
    from graphrun.llm.kernels import logprobs as module

    return module


@functools.cache
def sampling_ops() -> ModuleType:
    """The fused sampling kernels module, imported on first use (it imports Triton)."""
    from graphrun.llm.kernels import sampling as module

    return module


def sampling_block(rows: int) -> int:
    """Logits per split program of the fused sampling kernels for a step of `rows` rows.

    Measured on an H100 (benchmarks/sampler_ab.py, benchmarks/results/experiments/
    sampler-ab-noise-bug-nvidia-h100-80gb-hbm3.json: its timings; its token checks predate the noise
    fix; 151,936 ids, each variant alone in a CUDA graph): with top-k or top-p over peaked rows
    (LLM-like), 4096 is fastest from 1 to 16 rows (39.7 us at 1 row against 46.1 for 2048) and 2048 at
    64 (205 against 227); temperature-only rows differ by under 1 us up to 16.
    """
    return 4096 if rows <= 16 else 2048


def _gemv_for(x: torch.Tensor, layer: nn.Linear, silu_mul: bool) -> GemvConfig | None:
    if x.dim() != 2 or layer.bias is not None or x.stride(1) != 1 or not triton_enabled(x):
        return None
    n, k = layer.weight.shape
    return gemv_config(x.shape[0], n // 2 if silu_mul else n, k, silu_mul)


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """layer(x), through the skinny GEMV where it beats cuBLAS (a decode step's few rows on CUDA)."""
    config = _gemv_for(x, layer, silu_mul=False)
    if config is None:
        out: torch.Tensor = layer(x)
        return out
    result: torch.Tensor = gemv_ops().gemv(
        x, layer.weight, block_n=config.block_n, block_k=config.block_k, num_warps=config.num_warps
    )
    return result


def linear_silu_mul(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor | None:
    """silu(gate) * up of the fused [gate; up] layer in one GEMV kernel, or None where that is not faster."""
    config = _gemv_for(x, layer, silu_mul=True)
    if config is None:
        return None
    result: torch.Tensor = gemv_ops().gemv_silu_mul(
        x, layer.weight, block_n=config.block_n, block_k=config.block_k, num_warps=config.num_warps
    )
    return result


def norm_linear(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    layer: nn.Linear,
    silu_mul: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(layer(rmsnorm(x + residual)), x + residual) in one GEMV kernel (with the gated MLP's SiLU-mul
    when silu_mul), or None where the GEMV is not the faster product: then the caller norms, then
    projects. Saves the norm's own kernel and its output's round trip through memory."""
    config = _gemv_for(x, layer, silu_mul)
    if config is None or (residual is not None and residual.stride(1) != 1):
        return None
    ops = gemv_ops()
    result: tuple[torch.Tensor, torch.Tensor] = ops.norm_gemv(
        x, ops.Norm(norm_weight, eps, residual), layer.weight, silu_mul=silu_mul,
        block_n=config.block_n, block_k=config.block_k, num_warps=config.num_warps,
    )  # fmt: skip
    return result


def skinny_enabled(x: torch.Tensor) -> bool:
    """Whether the LM head of input x (rows, hidden) goes to skinny_logits (decode-sized, on CUDA)."""
    return x.dim() == 2 and x.shape[0] <= SKINNY_MAX_ROWS and triton_enabled(x) and not skinny_gemm_disabled()
