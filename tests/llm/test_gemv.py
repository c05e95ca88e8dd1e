"""The skinny GEMV kernels against torch, and the rule that picks them: on the GPU when present, else
through Triton's CPU interpreter in float32 (tests/conftest.py sets TRITON_INTERPRET=1)."""

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

from graphrun.llm.kernels import GemvConfig, gemv_config  # noqa: E402
from graphrun.llm.kernels import gemv as ops  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
TOL = 1e-5 if DTYPE is torch.float32 else 1e-2


def rand(*shape):
    return torch.randn(*shape, device=DEVICE, dtype=torch.float32).to(DTYPE)


def rel_err(got, want):
    return float((got.float() - want.float()).norm() / want.float().norm())


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize(("n", "k"), [(96, 512), (40, 1024), (8, 256)])  # wide, narrow, a partial block
@pytest.mark.parametrize(("block_n", "block_k", "num_warps"), [(1, 256, 4), (4, 128, 2), (16, 256, 4)])
def test_gemv_matches_matmul(m, n, k, block_n, block_k, num_warps):
    torch.manual_seed(m * 100 + n)
    x, w = rand(m, k), rand(n, k)
    out = ops.gemv(x, w, block_n=block_n, block_k=block_k, num_warps=num_warps)
    assert out.shape == (m, n) and out.dtype == x.dtype
    assert rel_err(out, F.linear(x.float(), w.float())) < TOL


@pytest.mark.parametrize("m", [1, 2, 4])
def test_gemv_silu_mul_matches_the_unfused_mlp_activation(m):
    torch.manual_seed(m)
    n, k = 48, 512
    x, w = rand(m, k), rand(2 * n, k)
    out = ops.gemv_silu_mul(x, w, block_n=4, block_k=128, num_warps=2)
    gate, up = F.linear(x.float(), w.float()).chunk(2, dim=-1)
    assert out.shape == (m, n)
    assert rel_err(out, F.silu(gate) * up) < TOL


def test_gemv_rejects_what_it_cannot_tile():
    x, w = rand(1, 100), rand(8, 100)
    with pytest.raises(ValueError, match="multiple of 64"):
        ops.gemv(x, w, block_n=4, block_k=64)
    with pytest.raises(ValueError, match="does not fit"):
        ops.gemv(rand(1, 128), rand(8, 256), block_n=4, block_k=128)


def test_gemv_config_follows_the_measured_crossover():
    assert gemv_config(1, 4096, 1024) == GemvConfig(4, 512, 4)  # QKV at one row
    assert gemv_config(1, 1024, 3072) == GemvConfig(1, 1024, 4)  # down at one row
    assert gemv_config(1, 3072, 1024, silu_mul=True) == GemvConfig(2, 512, 2)
    assert gemv_config(4, 1024, 2048) == GemvConfig(2, 512, 2)  # O at four rows
    assert gemv_config(2, 4096, 1024) is None  # wide outputs from two rows: cuBLAS
    assert gemv_config(2, 3072, 1024, silu_mul=True) is None
    assert gemv_config(8, 1024, 2048) is None  # eight rows: cuBLAS everywhere
    assert gemv_config(1, 1024, 1536) == GemvConfig(2, 512, 4)  # K not a multiple of 1024: halved block
    assert gemv_config(1, 1024, 1000) is None  # no block divides K


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("with_residual", [True, False])  # the first layer's input norm has none
@pytest.mark.parametrize("silu_mul", [False, True])
def test_norm_gemv_equals_add_rmsnorm_then_the_product(m, with_residual, silu_mul):
    from graphrun.llm.kernels import triton_ops

    torch.manual_seed(m + 10 * with_residual)
    k, n = 512, 48
    x, norm_w = rand(m, k), rand(k)
    residual = rand(m, k) if with_residual else None
    w = rand(2 * n if silu_mul else n, k)
    normed, summed = triton_ops.add_rmsnorm(x, residual, norm_w, 1e-6)
    out, got_summed = ops.norm_gemv(
        x, ops.Norm(norm_w, 1e-6, residual), w, silu_mul=silu_mul, block_n=4, block_k=128, num_warps=2
    )
    assert torch.equal(got_summed, summed)  # the residual stream is stored exactly
    if silu_mul:
        want = ops.gemv_silu_mul(normed, w, block_n=4, block_k=128, num_warps=2)
    else:
        want = ops.gemv(normed, w, block_n=4, block_k=128, num_warps=2)
    assert out.shape == want.shape
    assert rel_err(out, want) < TOL
