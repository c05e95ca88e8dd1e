"""Fused GPU kernels (Triton) for the decode hot path, and the rule that picks them.

`triton_enabled(t)` is true for CUDA tensors when Triton imports and GRAPHRUN_DISABLE_TRITON is unset;
otherwise the model runs its torch reference ops (CPU, CI, debugging). Tests check each kernel against
its reference: on the GPU, and on the CPU through Triton's interpreter.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

from graphrun.envvars import skinny_gemm_disabled, triton_disabled

SKINNY_MAX_ROWS = 16  # rows up to which the LM head uses skinny_logits instead of cuBLAS


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


@functools.cache
def kernel_ops() -> ModuleType:
    """The kernels module, imported on first use (importing Triton is slow and needs no work at import)."""
    from graphrun.llm.kernels import triton_ops as module

    return module


def skinny_enabled(x: torch.Tensor) -> bool:
    """Whether the LM head of input x (rows, hidden) goes to skinny_logits (decode-sized, on CUDA)."""
    return x.dim() == 2 and x.shape[0] <= SKINNY_MAX_ROWS and triton_enabled(x) and not skinny_gemm_disabled()
