"""Capture backends: `cuda` (real CUDA graphs) and `sim` (the CPU simulator); `auto` picks cuda if present."""

from __future__ import annotations

import torch

from graphrun.errors import BackendUnavailableError, ConfigError
from graphrun.graphs.backends.base import Backend, CapturedGraph
from graphrun.graphs.backends.sim import FaultPlan, SimBackend

BACKEND_NAMES = ("auto", "cuda", "sim")

__all__ = ["BACKEND_NAMES", "Backend", "CapturedGraph", "FaultPlan", "SimBackend", "make_backend"]


def make_backend(backend: str | Backend, device: torch.device | None = None) -> Backend:
    """Turn a backend name into an instance; 'auto' is cuda when a CUDA device is visible, else sim."""
    if not isinstance(backend, str):
        return backend
    if backend not in BACKEND_NAMES:
        raise ConfigError(f"backend must be one of {BACKEND_NAMES} or a Backend instance, got {backend!r}")
    if backend == "auto":
        use_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
        backend = "cuda" if use_cuda else "sim"
    if backend == "sim":
        return SimBackend()
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            "backend='cuda' needs a CUDA device and a CUDA build of torch; none is visible here "
            f"(torch {torch.__version__}). Use backend='sim' or 'auto'."
        )
    from graphrun.graphs.backends.cuda import CudaBackend

    return CudaBackend(device)
