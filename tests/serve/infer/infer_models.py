"""Models for the /v1/infer tests, reached as `--module infer_models:<factory>`.

Each output row depends on its input row alone (so padding and coalescing must not change it), and
carries its row's own values, so a test tells whose rows a client got back.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

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
