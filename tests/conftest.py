"""Shared fixtures: a fresh metrics registry per test, and skipping GPU tests where CUDA is absent."""

from __future__ import annotations

import pytest
import torch
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
