"""Capture backends: `cuda` (real CUDA graphs), `sim` (the CPU simulator) and `auto`.

`auto` has one meaning everywhere (GraphRunner, the LLM engine, `graphrun serve --graph-backend`): CUDA
graphs for CUDA tensors, and no graphs (the `eager` backend: every call runs eager, counted) for
anything else. The simulator reproduces graph semantics at a cost and without the speed, so it is only
ever used when named: tests, the demo, CPU smoke runs of the benchmarks.
"""

from __future__ import annotations

import torch

from graphrun.errors import BackendUnavailableError, ConfigError
from graphrun.graphs.backends.base import Backend, CapturedGraph
from graphrun.graphs.backends.eager import EagerBackend
from graphrun.graphs.backends.sim import FaultPlan, SimBackend

BACKEND_NAMES = ("auto", "cuda", "sim")

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "CapturedGraph",
    "EagerBackend",
    "FaultPlan",
    "SimBackend",
    "make_backend",
    "resolve_backend_name",
]


def resolve_backend_name(backend: str, device: torch.device | None = None) -> str:
    """What a backend name stands for on `device`: "cuda", "sim" or "eager" (no graphs).

    "auto" is "cuda" when CUDA is visible and `device` is a CUDA device (or not given), else "eager".
    Other names stand for themselves (make_backend checks that they can run here).
    """
    if backend not in BACKEND_NAMES:
        raise ConfigError(f"backend must be one of {BACKEND_NAMES} or a Backend instance, got {backend!r}")
    if backend != "auto":
        return backend
    use_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
    return "cuda" if use_cuda else "eager"


def make_backend(backend: str | Backend, device: torch.device | None = None) -> Backend:
    """Turn a backend name into an instance (see resolve_backend_name for what "auto" picks)."""
    if not isinstance(backend, str):
        return backend
    backend = resolve_backend_name(backend, device)
    if backend == "eager":
        return EagerBackend(device)
    if backend == "sim":
        return SimBackend()
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            "backend='cuda' needs a CUDA device and a CUDA build of torch; none is visible here "
            f"(torch {torch.__version__}). Use backend='sim' or 'auto'."
        )
    from graphrun.graphs.backends.cuda import CudaBackend

    return CudaBackend(device)
