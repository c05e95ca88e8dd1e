"""Skinny-batch projections: y = x @ W.T for a few rows of x, streaming each weight byte once.

A decode step at small batch is a chain of matrix-vector products over weights of 4-12 MB per layer.
cuBLAS picks GEMM tiles built for many rows; at 1-4 rows most of each tile is padding and each product
runs well below the copy bandwidth. Here one program owns BLOCK_N output columns, walks K once and
multiplies every row of x against the same weight tile held in registers (a broadcast multiply into
float32 partial sums reduced once at the end, no MMA), so the weights are read once whatever the row count.

`gemv_silu_mul` fuses the gated MLP's activation into the gate/up projection: a program reads the gate
rows and the matching up rows of the fused weight and stores silu(gate) * up, so the intermediate of
2 x width is never written or read back and one kernel per layer disappears.

Numerics: loads in the storage dtype, products and sums in float32, one rounding on store (the same
order as a cuBLAS GEMM's epilogue; summation order differs, so results agree within bf16 rounding, not
bit for bit). The silu epilogue rounds gate @ W to the weight dtype before the activation, as the
unfused path (a GEMM stored in bf16, then silu_mul) does.

On Hopper the kernel launches with programmatic dependent launch (kernels/pdl.py): its first weight
tile loads while the previous kernel finishes, and right after its wait it lets the next kernel be
scheduled. The same products are summed in the same order with or without it, so the results are
identical bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from graphrun.llm.kernels import pdl


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, out_ptr, N, stride_xm, stride_wn, stride_om, UP_OFFSET,
    res_ptr, norm_w_ptr, res_out_ptr, stride_rm, eps,
    K: tl.constexpr, M: tl.constexpr, M_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SILU_MUL: tl.constexpr,
    NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """out[:M, cols] = x[:M] @ w[cols].T (or silu(x @ w[cols].T) * (x @ w[UP_OFFSET + cols].T)).

    x: (M, K) row-major; w: (rows, K) row-major. K % BLOCK_K == 0 (the caller checks). With NORM, x is
    first replaced by rmsnorm(x + residual) * norm_w, rounded as the add_rmsnorm kernel rounds it; every
    program computes the row statistics itself (x is a few KiB, read from L2) and program 0 stores
    x + residual to res_out.

    With USE_PDL (kernels/pdl.py) the first weight tile is loaded before gdc_wait: weights are never
    written during a step, so they stream in while the previous kernel drains (qwen3-0.6b-shape at one
    row: K is 2 or 3 tiles, so a half or a third of the program's weight bytes); x and the residual
    are earlier kernels' outputs, and any store may land in a buffer they still read: both come after.
    gdc_launch_dependents comes right after the wait.
    """
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    rows = tl.arange(0, M_PAD)
    row_ok = rows < M
    ks = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + cols[:, None].to(tl.int64) * stride_wn + ks[None, :]  # (BLOCK_N, BLOCK_K)
    x_rows = x_ptr + rows[:, None] * stride_xm + ks[None, :]  # (M_PAD, BLOCK_K)
    # products are summed over K only once, after the loop: the loop body is loads and FMAs
    dtype = w_ptr.dtype.element_ty
    up_rows = w_rows + UP_OFFSET * stride_wn
    if USE_PDL:  # weights only before the wait (pdl.py's contract)
        w_first = tl.load(w_rows, mask=col_ok[:, None], other=0.0)
        if SILU_MUL:
            up_first = tl.load(up_rows, mask=col_ok[:, None], other=0.0)
        tl.extra.cuda.gdc_wait()
        # the next kernel may be scheduled now: its programs fill the SMs ours leave and load their own
        # weights during our work (their wait still waits for all of us). Measured against triggering
        # after the loop (benchmarks/decode_kernels_ab.py, H100): the step 3% shorter at 1 and 4 rows,
        # even at 16, the same tokens (results/experiments/decode-kernels-ab-early-rope-*.json)
        tl.extra.cuda.gdc_launch_dependents()
    res_rows = res_ptr + rows[:, None] * stride_rm + ks[None, :]
    rstd = tl.zeros([M_PAD], dtype=tl.float32)  # (M_PAD,) used only with NORM
    if NORM:
        squares = tl.zeros([M_PAD, BLOCK_K], dtype=tl.float32)
        stores = rows < tl.where(tl.program_id(0) == 0, M, 0)  # program 0 writes x + residual
        for k0 in range(0, K, BLOCK_K):
            summed = _summed(x_rows + k0, res_rows + k0, row_ok, dtype, HAS_RESIDUAL)
            squares += summed * summed
            out_rows = res_out_ptr + rows[:, None] * K + (k0 + ks)[None, :]
            tl.store(out_rows, summed.to(dtype), mask=stores[:, None])
        rstd = tl.rsqrt(tl.sum(squares, axis=1) / K + eps)
    part = tl.zeros([M_PAD, BLOCK_N, BLOCK_K], dtype=tl.float32)
    part_up = tl.zeros([M_PAD, BLOCK_N, BLOCK_K], dtype=tl.float32)
    if USE_PDL:  # the first tile, its weights already in registers; the loop below starts at the second
        x_first = _x_tile(x_rows, res_rows, norm_w_ptr, 0, ks, rstd, row_ok, dtype, NORM, HAS_RESIDUAL)
        part += x_first[:, None, :] * w_first.to(tl.float32)[None, :, :]
        if SILU_MUL:
            part_up += x_first[:, None, :] * up_first.to(tl.float32)[None, :, :]
    for k0 in range(USE_PDL * BLOCK_K, K, BLOCK_K):
        x = _x_tile(x_rows, res_rows, norm_w_ptr, k0, ks, rstd, row_ok, dtype, NORM, HAS_RESIDUAL)
        w = tl.load(w_rows + k0, mask=col_ok[:, None], other=0.0).to(tl.float32)
        part += x[:, None, :] * w[None, :, :]
        if SILU_MUL:
            up = tl.load(up_rows + k0, mask=col_ok[:, None], other=0.0)
            part_up += x[:, None, :] * up.to(tl.float32)[None, :, :]
    acc = tl.sum(part, axis=2)  # (M_PAD, BLOCK_N)
    acc_up = tl.sum(part_up, axis=2)
    if SILU_MUL:
        gate = acc.to(dtype).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        result = act * acc_up.to(dtype).to(tl.float32)
    else:
        result = acc
    out = out_ptr + rows[:, None] * stride_om + cols[None, :]
    tl.store(out, result.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _x_tile(
    x_rows, res_rows, norm_w_ptr, k0, ks, rstd, row_ok,
    dtype: tl.constexpr, NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):  # fmt: skip
    """The K block at k0 of the product's left side as float32 (M_PAD, BLOCK_K): x, or with NORM
    rmsnorm(x + residual) * norm_w rounded as add_rmsnorm rounds it."""
    if NORM:
        summed = _summed(x_rows + k0, res_rows + k0, row_ok, dtype, HAS_RESIDUAL)
        normed = (summed * rstd[:, None]).to(dtype).to(tl.float32)
        scale = tl.load(norm_w_ptr + k0 + ks).to(tl.float32)
        x = (scale[None, :] * normed).to(dtype).to(tl.float32)
    else:
        x = tl.load(x_rows + k0, mask=row_ok[:, None], other=0.0).to(tl.float32)
    return x


@triton.jit
def _summed(x_ptrs, res_ptrs, row_ok, dtype: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """x + residual rounded to the storage dtype, as float32 (M_PAD, BLOCK_K)."""
    x = tl.load(x_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x = (x + tl.load(res_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)).to(dtype)
    return x.to(tl.float32)


def _check(x: torch.Tensor, weight: torch.Tensor, block_k: int) -> None:
    k = weight.shape[1]
    if x.dim() != 2 or x.shape[1] != k or x.stride(1) != 1 or weight.stride(1) != 1 or k % block_k:
        raise ValueError(
            f"gemv: x {tuple(x.shape)} does not fit weight {tuple(weight.shape)} "
            f"(2-d, contiguous rows, width a multiple of {block_k})"
        )


@dataclass(frozen=True, slots=True)
class Norm:
    """An RMSNorm to apply to x (after adding residual, when given) before the product."""

    weight: torch.Tensor  # (k,)
    eps: float
    residual: torch.Tensor | None  # (m, k), or None for the first layer's input norm


def _launch(
    x: torch.Tensor, weight: torch.Tensor, n: int, silu_mul: bool, norm: Norm | None,
    block_n: int, block_k: int, num_warps: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    _check(x, weight, block_k)
    m, k = x.shape[0], weight.shape[1]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    summed = torch.empty_like(x) if norm is not None else None
    residual = norm.residual if norm is not None and norm.residual is not None else x
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, out, n, x.stride(0), weight.stride(0), out.stride(0), n if silu_mul else 0,
        residual, norm.weight if norm is not None else weight, summed if summed is not None else out,
        residual.stride(0), norm.eps if norm is not None else 0.0,
        K=k, M=m, M_PAD=triton.next_power_of_2(m), BLOCK_N=block_n, BLOCK_K=block_k, SILU_MUL=silu_mul,
        NORM=norm is not None, HAS_RESIDUAL=norm is not None and norm.residual is not None,
        num_warps=num_warps, **pdl.launch_options(x.device),
    )  # fmt: skip
    return out, summed


def gemv(
    x: torch.Tensor, weight: torch.Tensor, *, block_n: int = 16, block_k: int = 256, num_warps: int = 4
) -> torch.Tensor:
    """x (m, k) @ weight (n, k).T -> (m, n) in x's dtype, for small m (a decode step's rows)."""
    return _launch(x, weight, weight.shape[0], False, None, block_n, block_k, num_warps)[0]


def gemv_silu_mul(
    x: torch.Tensor, weight: torch.Tensor, *, block_n: int = 16, block_k: int = 256, num_warps: int = 4
) -> torch.Tensor:
    """x (m, k) against the fused [gate; up] weight (2 n, k) -> silu(x @ gate.T) * (x @ up.T), (m, n)."""
    return _launch(x, weight, weight.shape[0] // 2, True, None, block_n, block_k, num_warps)[0]


def norm_gemv(
    x: torch.Tensor, norm: Norm, weight: torch.Tensor, *, silu_mul: bool = False,
    block_n: int = 16, block_k: int = 256, num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(gemv or gemv_silu_mul of rmsnorm(x + residual), x + residual): add_rmsnorm and the product in one
    kernel. The normalized rows equal what add_rmsnorm stores, up to the float32 order of the row's sum
    of squares."""
    n = weight.shape[0] // 2 if silu_mul else weight.shape[0]
    out, summed = _launch(x, weight, n, silu_mul, norm, block_n, block_k, num_warps)
    assert summed is not None
    return out, summed
