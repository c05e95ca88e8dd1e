"""Shared fixtures: a fresh metrics registry per test, and skipping GPU tests where CUDA is absent.

Without CUDA, Triton kernels are tested through Triton's CPU interpreter. TRITON_INTERPRET must be set
before anything imports Triton (torch's compiler stack may, through the simulator), so it is set here.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpreter_runtime_loop_bounds() -> None:
    """Let Triton's CPU interpreter (3.6) run loops bounded by runtime values under NumPy 2.

    The interpreter turns a scalar into a one-element 1-d array and converts it with int(), which
    NumPy 2 refuses; compiled kernels are unaffected. This converts through the array's single item.
    """
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = interpreter._patch_lang_tensor

    def patch(tensor, scope):  # type: ignore[no-untyped-def]
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patch


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_runtime_loop_bounds()

import pytest  # noqa: E402  (after TRITON_INTERPRET is set)
from prometheus_client import CollectorRegistry  # noqa: E402


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
