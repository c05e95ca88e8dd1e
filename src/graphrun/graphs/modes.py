"""Graph modes and the per-call dispatch between a FULL rung, a PIECEWISE rung and eager.

A FULL graph records a whole call; a PIECEWISE graph set records the segments between uncapturable ops
(graphs/piecewise/) and runs those ops eagerly in between. The mode says which of the two a runner
captures: NONE (neither: every call eager), FULL, PIECEWISE, or FULL_AND_PIECEWISE (both: FULL where a
call is uniform and its FULL rung captured, PIECEWISE for the rest - vLLM's default has the same name).

A call is described by a BatchDescriptor: its token (or batch) count, whether it is uniform (every row
the same kind of work, e.g. one decode token per sequence; a generic runner's calls always are), and
any further dims the owner declares. The Dispatcher maps a descriptor to a Route once per call from two
lookups the runners already keep (their rung_for), so it adds no capture state of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from graphrun.errors import ConfigError


class CudaGraphMode(StrEnum):
    """Which graphs a runner captures."""

    NONE = "none"
    FULL = "full"
    PIECEWISE = "piecewise"
    FULL_AND_PIECEWISE = "full_and_piecewise"

    @classmethod
    def parse(cls, value: str | CudaGraphMode) -> CudaGraphMode:
        """A mode from its name, any case, '-' or '_' (the CLI's spelling); a bad one names the valid ones."""
        if isinstance(value, CudaGraphMode):
            return value
        key = str(value).strip().lower().replace("-", "_")
        try:
            return cls(key)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ConfigError(f"cuda graph mode must be one of {valid}, got {value!r}") from None

    @property
    def full(self) -> bool:
        """Whether FULL graphs are captured."""
        return self in (CudaGraphMode.FULL, CudaGraphMode.FULL_AND_PIECEWISE)

    @property
    def piecewise(self) -> bool:
        """Whether PIECEWISE segment graphs are captured."""
        return self in (CudaGraphMode.PIECEWISE, CudaGraphMode.FULL_AND_PIECEWISE)


class RouteKind(StrEnum):
    """What one call runs on."""

    FULL = "full"
    PIECEWISE = "piecewise"
    EAGER = "eager"


@dataclass(frozen=True, slots=True)
class BatchDescriptor:
    """One call's shape as dispatch sees it: its row (token) count, whether its rows are uniform, and
    any other dims the owner declares as (name, value) pairs, e.g. (("seq_len", 512),)."""

    num_tokens: int
    uniform: bool = True
    dims: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"a batch has at least one token, got num_tokens={self.num_tokens}")


@dataclass(frozen=True, slots=True)
class Route:
    """Where a call goes: a FULL rung, a PIECEWISE rung, or eager (rung None)."""

    kind: RouteKind
    rung: int | None = None


EAGER = Route(RouteKind.EAGER)

RungLookup = Callable[[int], int | None]


class Dispatcher:
    """Maps a BatchDescriptor to a Route under one mode.

    full_rung / piecewise_rung: the FULL and PIECEWISE owners' rung_for (None when the mode has no such
    graphs). A non-uniform call never takes a FULL rung: a FULL graph was captured for uniform calls only.
    """

    def __init__(
        self,
        mode: CudaGraphMode,
        full_rung: RungLookup | None = None,
        piecewise_rung: RungLookup | None = None,
    ) -> None:
        if mode.full and full_rung is None:
            raise ConfigError(f"mode {mode.value} dispatches to FULL graphs, but no FULL runner was given")
        if mode.piecewise and piecewise_rung is None:
            raise ConfigError(
                f"mode {mode.value} dispatches to PIECEWISE graphs, but no piecewise runner was given"
            )
        self.mode = mode
        self._full = full_rung if mode.full else None
        self._piecewise = piecewise_rung if mode.piecewise else None

    def dispatch(self, batch: BatchDescriptor) -> Route:
        """FULL when the call is uniform and its FULL rung is captured, else PIECEWISE when a segment rung
        fits, else eager."""
        if self._full is not None and batch.uniform:
            rung = self._full(batch.num_tokens)
            if rung is not None:
                return Route(RouteKind.FULL, rung)
        if self._piecewise is not None:
            rung = self._piecewise(batch.num_tokens)
            if rung is not None:
                return Route(RouteKind.PIECEWISE, rung)
        return EAGER
