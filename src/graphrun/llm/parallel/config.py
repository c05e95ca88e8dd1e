"""Which rank of how many this process is: the one fact every tensor-parallel layer is built from.

Frozen and passed in by whoever starts the ranks (the engine, a test); nothing here reads environment
variables or the torch.distributed globals, so a model's shape depends only on its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphrun.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ParallelConfig:
    """Tensor-parallel world size and this process's rank in it; (1, 0) is the single-GPU model."""

    world_size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        for name in ("world_size", "rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"ParallelConfig.{name} must be an int, got {value!r}")
        if self.world_size < 1:
            raise ConfigError(f"tensor parallel size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside [0, {self.world_size}) for that world size")

    @property
    def is_single(self) -> bool:
        """One rank: no collectives, every layer whole."""
        return self.world_size == 1
