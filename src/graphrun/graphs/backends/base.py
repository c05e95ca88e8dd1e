"""What a capture backend provides to the runner: warm-up, capture, replay, memory accounting.

The runner owns shapes, buffers, fallback and metrics; a backend only knows how to record a zero-argument
`body` (which reads static inputs and writes static outputs) and replay it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

import torch


class CapturedGraph(Protocol):
    """One recorded body; replay re-runs its device work on the same storage."""

    nbytes: int  # memory the capture added to the pool, as the backend measures it

    def replay(self) -> None:
        """Re-run the recorded work (asynchronously on CUDA)."""

    def release(self) -> None:
        """Drop the recording and what it holds."""


class Backend(Protocol):
    """A capture mechanism: CUDA graphs or the CPU simulator."""

    name: str
    device: torch.device

    def warmup(self, body: Callable[[], object], iters: int) -> None:
        """Run `body` eagerly `iters` times the way capture will see it (side stream on CUDA)."""

    def estimate_bytes(self, body: Callable[[], object]) -> int:
        """Run `body` once eagerly and return the extra memory it needed (peak or total)."""

    def projected_pool_bytes(self, estimate: int) -> int:
        """Pool size after capturing a body whose eager run needed `estimate` bytes."""

    def capture(self, body: Callable[[], object], label: str = "") -> CapturedGraph:
        """Record `body`; raise on host syncs or uncapturable ops, as CUDA would. `label` names replays."""

    def pool_bytes(self) -> int:
        """Memory held by all graphs this backend captured."""

    def synchronize(self) -> None:
        """Wait for queued device work."""

    def range(self, label: str) -> AbstractContextManager[None]:
        """A profiler range (NVTX on CUDA, nothing in the simulator)."""


def null_range() -> Iterator[None]:
    """A do-nothing range body, for backends without a profiler."""
    yield
