"""The backend `auto` resolves to where no CUDA graph can run: capture nothing, run every call eager.

CUDA graphs exist only for CUDA tensors, and the simulator (sim.py) reproduces their constraints without
their speed: it is a test tool, so `auto` never picks it. A runner on this backend marks every rung
eager once, with the reason `no_graph_backend`, and counts each call it runs eager, so a laptop shows
the same runner, status and metric series as a GPU host (with nothing captured), never a silent no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from graphrun.errors import BackendUnavailableError
from graphrun.graphs.backends.base import CapturedGraph


class EagerBackend:
    """No graphs: warm-up and synchronisation do nothing, capture raises."""

    name = "eager"

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device if device is not None else torch.device("cpu")

    @property
    def why(self) -> str:
        """One line for a rung's status: why nothing was captured, and how to get graphs."""
        return (
            f"backend='auto' on a {self.device.type} device: CUDA graphs need CUDA tensors; "
            "backend='sim' simulates them on the CPU (semantics, not speed)"
        )

    def warmup(self, body: Callable[[], object], iters: int) -> None:
        """Nothing to warm: no call is ever captured."""

    def estimate_bytes(self, body: Callable[[], object]) -> int:
        """No graph, no pool: 0."""
        return 0

    def projected_pool_bytes(self, estimate: int) -> int:
        """No graph, no pool: 0."""
        return 0

    def capture(self, body: Callable[[], object], label: str = "") -> CapturedGraph:
        """Always raises: this backend records nothing."""
        raise BackendUnavailableError(self.why)

    def pool_bytes(self) -> int:
        """No graph, no pool: 0."""
        return 0

    def synchronize(self) -> None:
        """Eager CPU work is already done when a call returns."""

    @contextlib.contextmanager
    def range(self, label: str) -> Iterator[None]:
        """No profiler ranges."""
        yield
