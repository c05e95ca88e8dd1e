"""Models for the /v1/infer tests, reached as `--module infer_models:<factory>`.

Each output row depends on its input row alone (so padding and coalescing must not change it), and
carries its row's own values, so a test tells whose rows a client got back.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from graphrun.serve.infer.dims import DynamicDim
from graphrun.serve.infer.source import ModelSource

FEATURES = 4


class Scale(torch.nn.Module):
    """x * scale per row, and each row's sum: a client that got another's rows sees other numbers."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        scaled = x * scale
        return {"scaled": scaled, "total": scaled.sum(-1)}


class Slow(torch.nn.Module):
    """x + 1, after sleeping: keeps requests in flight long enough to fill a queue."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.3)
        return x + 1


class Mixed(torch.nn.Module):
    """Integer ids and a boolean mask in, a float and an integer out (dtypes other than float32)."""

    def forward(self, ids: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept = ids * keep.to(ids.dtype)
        return kept.to(torch.float64) / 2, kept.sum(-1)


def scale_factory() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """(module, positional example): inputs named after forward's parameters."""
    return Scale(), (torch.randn(2, FEATURES), torch.ones(2, 1))


def finite_scale_factory() -> ModelSource:
    """The same model, declaring that x must be finite."""
    example = (("x", torch.randn(2, FEATURES)), ("scale", torch.ones(2, 1)))
    return ModelSource(Scale(), example, finite=frozenset({"x"}), name="finite-scale")


def slow_factory() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """(module, dict example): inputs passed by keyword."""
    return Slow(), {"x": torch.zeros(1, 2)}


def mixed_factory() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    return Mixed(), {"ids": torch.ones(2, 3, dtype=torch.int64), "keep": torch.ones(2, 3, dtype=torch.bool)}


def export_scale(path: Path) -> Path:
    """Scale as a torch.export archive with a dynamic batch dim."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = (torch.randn(3, FEATURES), torch.ones(3, 1))
    program = torch.export.export(Scale(), example, dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(program, str(path))
    return path


def scaled(x: list[list[float]], scale: list[float]) -> list[list[float]]:
    """What Scale answers for `scaled`, computed by hand."""
    return [[v * s for v in row] for row, s in zip(x, scale, strict=True)]


def scale_cuda_factory() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """Scale on the GPU (the GPU tests' model)."""
    return Scale().cuda(), (torch.randn(2, FEATURES, device="cuda"), torch.ones(2, 1, device="cuda"))


VOCAB, HIDDEN, LENGTHS = 50, 8, (4, 8, 16)


class TinyEncoder(torch.nn.Module):
    """Embedding, masked single-head attention, a per-token head and a masked mean pool:
    input_ids (b, l), attention_mask (b, l) -> {"tokens": (b, l, 3), "pooled": (b, HIDDEN)}.

    honour_mask=False pools over every position, padding included: not padding-safe along the length.
    """

    def __init__(self, honour_mask: bool = True) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
            self.pos = torch.nn.Embedding(LENGTHS[-1], HIDDEN)
            self.qkv = torch.nn.Linear(HIDDEN, 3 * HIDDEN)
            self.head = torch.nn.Linear(HIDDEN, 3)
        self.honour_mask = honour_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        seq = input_ids.shape[1]
        x = self.embed(input_ids) + self.pos.weight[:seq]  # (b, l, hidden)
        q, k, v = self.qkv(x).chunk(3, -1)
        scores = (q @ k.transpose(1, 2)) / HIDDEN**0.5  # (b, l, l)
        scores = scores.masked_fill(attention_mask[:, None, :] == 0, -1e9)
        h = x + scores.softmax(-1) @ v
        m = attention_mask[..., None].to(h.dtype) if self.honour_mask else torch.ones_like(h[..., :1])
        return {"tokens": self.head(h), "pooled": (h * m).sum(1) / m.sum(1).clamp_min(1.0)}


def encoder_source(honour_mask: bool = True, device: str = "cpu") -> ModelSource:
    """TinyEncoder served in buckets over batch x length (rungs 4, 8, 16); output axes inferred."""
    ids = torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    example = (("input_ids", ids.to(device)), ("attention_mask", torch.ones_like(ids).to(device)))
    length = DynamicDim("length", {"input_ids": 1, "attention_mask": 1}, LENGTHS, pad_value=0)
    model = TinyEncoder(honour_mask).to(device).eval()
    return ModelSource(model, example, keywords=True, dims=(length,), mask="attention_mask", name="encoder")


def encoder_factory() -> ModelSource:
    return encoder_source()


def unmasked_encoder_factory() -> ModelSource:
    """An encoder whose pool ignores the mask: padding it along the length changes its answer."""
    return encoder_source(honour_mask=False)


def encoder_cuda_factory() -> ModelSource:
    return encoder_source(device="cuda")


def declared_encoder_factory() -> ModelSource:
    """The encoder with its length's output axes declared (tokens follows it on axis 1)."""
    source = encoder_source()
    length = dataclasses.replace(source.dims[0], outputs={"tokens": 1})
    return dataclasses.replace(source, dims=(length,))
