"""Shared fixtures: a fresh metrics registry per test, and skipping GPU tests where CUDA is absent.

Without CUDA, Triton kernels are tested through Triton's CPU interpreter. TRITON_INTERPRET must be set
before anything imports Triton (torch's compiler stack may, through the simulator), so it is set here.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from prometheus_client import CollectorRegistry


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip @pytest.mark.gpu tests cleanly on machines without CUDA (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def registry() -> CollectorRegistry:
    """A private Prometheus registry, so metric values are exact per test."""
    return CollectorRegistry()
