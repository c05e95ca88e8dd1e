"""Model factories that `bench infer` serves: `graphrun serve --module graphrun.bench.infer_models:<name>`.

Each factory takes no argument (the server calls it in its engine process) and returns the module and a
batch of example inputs, built by bench/models.py with seeded weights: float16 on CUDA, float32 on the
CPU (where the bench is a smoke test). The MLP is the default on a GPU: its kernels are tiny, so a request
costs kernel launches more than arithmetic and graphs matter at every batch the server coalesces. The
encoder is transformer-shaped (hidden states in, hidden states out) at a size a 2-CPU machine can serve.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from graphrun.bench import models

EXAMPLE_ROWS = 2
SERVED = ("mlp", "mlp_small", "encoder", "encoder_small")  # the factories below, by name


def _placed(module: nn.Module, row_shape: tuple[int, ...]) -> tuple[nn.Module, torch.Tensor]:
    """The module in eval mode on the serving device and dtype, and an example batch of standard normals."""
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    example = torch.randn((EXAMPLE_ROWS, *row_shape), generator=torch.Generator().manual_seed(1))
    return module.to(device, dtype).eval(), example.to(device, dtype)


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # seeded weights, the server's RNG untouched
        torch.manual_seed(models.WEIGHT_SEED)
        return build()


def mlp_factory(dim: int, depth: int) -> tuple[nn.Module, torch.Tensor]:
    """A Linear+GELU stack of `depth` layers, (batch, dim) -> (batch, dim)."""
    return _placed(_seeded(lambda: models.mlp(dim, depth)), (dim,))


def encoder_factory(
    num_layers: int, hidden: int, num_heads: int, ffn: int, seq: int
) -> tuple[nn.Module, torch.Tensor]:
    """Post-LN transformer layers on (batch, seq, hidden) hidden states."""
    module = _seeded(lambda: models.Encoder(num_layers, hidden, num_heads, ffn))
    return _placed(module, (seq, hidden))


def mlp() -> tuple[nn.Module, torch.Tensor]:
    """dim 1024, 4 layers (the zoo's MLP): launch-bound at small batches."""
    return mlp_factory(1024, 4)


def mlp_small() -> tuple[nn.Module, torch.Tensor]:
    """dim 64, 2 layers: the CPU smoke test's model."""
    return mlp_factory(64, 2)


def encoder() -> tuple[nn.Module, torch.Tensor]:
    """4 layers, hidden 256, 4 heads, FFN 1024, 32 positions."""
    return encoder_factory(4, 256, 4, 1024, 32)


def encoder_small() -> tuple[nn.Module, torch.Tensor]:
    """2 layers, hidden 64, 4 heads, FFN 128, 16 positions."""
    return encoder_factory(2, 64, 4, 128, 16)
