"""Replay faults at a rate, on any backend: a drill of the eager fallback under real load.

`graphrun serve --faults replay=0.01` wraps the engine's capture backend in a FaultyBackend: once armed
(after every graph is captured and verified, so a drill never breaks a rung at start-up), each replay of
any of its graphs raises InjectedReplayFault with probability `rate`, before the graph runs. The runner
treats it like any failed replay (call_path.py): that call runs eager and is counted under
`replay_error` in the fallback metrics; the answer is the eager one. The sim backend's FaultPlan targets
rungs for unit tests; this one is random at a rate (seeded) for load tests.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from graphrun.errors import ConfigError, GraphrunError
from graphrun.graphs.backends.base import Backend, CapturedGraph


class InjectedReplayFault(GraphrunError, RuntimeError):
    """A replay failure injected by a fault drill (FaultyBackend), not a real one."""


@dataclass(frozen=True, slots=True)
class ReplayFaults:
    """Fail this fraction of graph replays (0: none), drawn from a generator seeded with `seed`."""

    rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"replay fault rate must be in [0, 1], got {self.rate}")


class FaultyGraph:
    """A captured graph whose replay fails at the backend's rate once the backend is armed."""

    def __init__(self, inner: CapturedGraph, backend: FaultyBackend) -> None:
        self._inner = inner
        self._backend = backend
        self.nbytes = inner.nbytes

    def replay(self) -> None:
        """Raise InjectedReplayFault (nothing ran), or replay the real graph."""
        self._backend.maybe_fail()
        self._inner.replay()

    def release(self) -> None:
        """Release the real graph."""
        self._inner.release()


class FaultyBackend:
    """`inner`, except that its graphs' replays fail at `faults.rate` while `armed`."""

    def __init__(self, inner: Backend, faults: ReplayFaults) -> None:
        self.inner = inner
        self.faults = faults
        self.name = inner.name
        self.device: torch.device = inner.device
        self.armed = False  # set once capture and verification are over (the owner decides when)
        self.num_injected = 0
        self._random = random.Random(faults.seed)

    def maybe_fail(self) -> None:
        """While armed: raise InjectedReplayFault with probability `rate` (counted)."""
        if self.armed and self._random.random() < self.faults.rate:
            self.num_injected += 1
            raise InjectedReplayFault(f"fault drill: replay failure injected (rate {self.faults.rate})")

    def register_static(self, tensors: list[torch.Tensor]) -> None:
        """Passed to the inner backend (the simulator treats static buffers as device memory)."""
        register = getattr(self.inner, "register_static", None)
        if register is not None:
            register(tensors)

    def warmup(self, body: Callable[[], object], iters: int) -> None:
        """As the inner backend."""
        self.inner.warmup(body, iters)

    def estimate_bytes(self, body: Callable[[], object]) -> int:
        """As the inner backend."""
        return self.inner.estimate_bytes(body)

    def projected_pool_bytes(self, estimate: int) -> int:
        """As the inner backend."""
        return self.inner.projected_pool_bytes(estimate)

    def capture(self, body: Callable[[], object], label: str = "") -> FaultyGraph:
        """The inner backend's graph, wrapped so that its replays may fail."""
        return FaultyGraph(self.inner.capture(body, label), self)

    def pool_bytes(self) -> int:
        """As the inner backend."""
        return self.inner.pool_bytes()

    def synchronize(self) -> None:
        """As the inner backend."""
        self.inner.synchronize()

    def range(self, label: str) -> AbstractContextManager[None]:
        """As the inner backend."""
        return self.inner.range(label)
