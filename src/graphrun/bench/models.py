"""Benchmark models in plain PyTorch with seeded random weights: an MLP, a BERT-large-shaped encoder and a
ResNet-50-shaped convnet.

Random weights suffice: replay speed depends on shapes and kernels, not on trained values. Each model has
a `small` preset so CPU smoke tests run the same code paths in seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from graphrun.errors import ConfigError

MODEL_NAMES = ("mlp", "encoder", "convnet")
WEIGHT_SEED = 0
INPUT_SEED = 1

InputFn = Callable[[int], torch.Tensor]


def mlp(dim: int = 1024, depth: int = 4) -> nn.Sequential:
    """Linear+GELU stack, (batch, dim) -> (batch, dim): small kernels, launch-bound at small batch."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(dim, dim), nn.GELU()]
    return nn.Sequential(*layers)


class EncoderLayer(nn.Module):
    """Post-LN transformer layer as in BERT: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, hidden: int, num_heads: int, ffn: int) -> None:
        super().__init__()
        if hidden % num_heads:
            raise ConfigError(f"hidden={hidden} must be a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden)
        self.up = nn.Linear(hidden, ffn)
        self.down = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """keep: None, or (batch, 1, 1, seq) bool, True for the keys a query may attend to (real tokens)."""
        b, s, h = x.shape  # (batch, seq, hidden)
        qkv = self.qkv(x).view(b, s, 3, self.num_heads, h // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, num_heads, seq, head_dim)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(b, s, h)
        x = self.ln1(x + self.proj(attn))
        return self.ln2(x + self.down(F.gelu(self.up(x))))


class Encoder(nn.Module):
    """A stack of post-LN layers on hidden states: (batch, seq, hidden) -> same (no embedding, no head)."""

    def __init__(
        self, num_layers: int = 24, hidden: int = 1024, num_heads: int = 16, ffn: int = 4096
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(hidden, num_heads, ffn) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MaskedEncoder(nn.Module):
    """BERT-shaped with its inputs: token ids and an attention mask (1 real, 0 padding).

    Token + position embeddings and a LayerNorm, post-LN layers whose attention reads real tokens only,
    then a mean pool over real tokens: {"pooled": (batch, hidden), "hidden": (batch, seq, hidden)}.
    Padding-safe along the length, so buckets over batch x length may pad it.
    """

    def __init__(
        self, vocab: int = 30522, max_len: int = 512, num_layers: int = 24, hidden: int = 1024,
        num_heads: int = 16, ffn: int = 4096,
    ) -> None:  # fmt: skip
        super().__init__()
        self.tokens = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(max_len, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(EncoderLayer(hidden, num_heads, ffn) for _ in range(num_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        seq = input_ids.shape[1]
        x = self.ln(self.tokens(input_ids) + self.positions.weight[:seq])  # (batch, seq, hidden)
        keep = attention_mask[:, None, None, :].bool()  # (batch, 1, 1, seq)
        for layer in self.layers:
            x = layer(x, keep)
        m = attention_mask[..., None].to(x.dtype)
        return {"pooled": (x * m).sum(1) / m.sum(1).clamp_min(1.0), "hidden": x}


def masked_encoder(small: bool = False) -> MaskedEncoder:
    """BERT-large shape with embeddings (30522 tokens, 512 positions); small: 2 layers, hidden 64."""
    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG untouched
        torch.manual_seed(WEIGHT_SEED)
        return MaskedEncoder(512, 128, 2, 64, 4, 128) if small else MaskedEncoder()


def encoder(small: bool = False) -> Encoder:
    """BERT-large shape (24 layers, hidden 1024, 16 heads, FFN 4096); small: 2 layers, hidden 64."""
    return Encoder(2, 64, 4, 128) if small else Encoder()


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return [conv, nn.BatchNorm2d(c_out)]


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce, 3x3 (carries the stride), 1x1 expand x4, plus the shortcut."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.main = nn.Sequential(
            *_conv_bn(c_in, width, 1), nn.ReLU(inplace=True),
            *_conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
            *_conv_bn(width, c_out, 1),
        )  # fmt: skip
        needs_proj = stride != 1 or c_in != c_out
        self.shortcut = nn.Sequential(*_conv_bn(c_in, c_out, 1, stride)) if needs_proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.main(x) + self.shortcut(x))


class ConvNet(nn.Module):
    """ResNet-50 layout: stem, four bottleneck stages, global average pool, linear classifier."""

    def __init__(
        self,
        blocks: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        stem = widths[0]
        self.stem = nn.Sequential(*_conv_bn(3, stem, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = []
        c_in = stem
        for i, (num_blocks, width) in enumerate(zip(blocks, widths, strict=True)):
            for j in range(num_blocks):
                stages.append(Bottleneck(c_in, width, 2 if j == 0 and i > 0 else 1))
                c_in = width * Bottleneck.expansion
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (batch, channels, h, w)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))  # (batch, num_classes)


def convnet(small: bool = False) -> ConvNet:
    """ResNet-50 shape ([3,4,6,3] blocks, widths 64..512 x4); small: one block per stage, widths 8..64."""
    return ConvNet((1, 1, 1, 1), (8, 16, 32, 64), 10) if small else ConvNet()


def _make(name: str, small: bool) -> tuple[nn.Module, tuple[int, ...]]:
    """The module and the shape of one input row (without the batch dimension)."""
    if name == "mlp":
        dim = 64 if small else 1024
        return mlp(dim, 2 if small else 4), (dim,)
    if name == "encoder":
        return encoder(small), (16, 64) if small else (128, 1024)
    if name == "convnet":
        return convnet(small), (3, 32, 32) if small else (3, 224, 224)
    raise ConfigError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def _input_fn(row_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> InputFn:
    """Fresh standard-normal batches from a private seeded generator (never zeros, never global RNG)."""
    gen = torch.Generator().manual_seed(INPUT_SEED)

    def make_input(batch: int) -> torch.Tensor:
        if batch < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch}")
        return torch.randn((batch, *row_shape), generator=gen).to(device=device, dtype=dtype)

    return make_input


def build(
    name: str, small: bool, dtype: torch.dtype, device: torch.device | str
) -> tuple[nn.Module, InputFn]:
    """(module in eval mode on `device`/`dtype`, input_fn(batch) -> random input); weights seeded on CPU."""
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(WEIGHT_SEED)
        module, row_shape = _make(name, small)
    dev = torch.device(device)
    module = module.to(device=dev, dtype=dtype).eval()
    return module, _input_fn(row_shape, dtype, dev)
