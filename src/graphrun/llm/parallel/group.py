"""The collectives tensor-parallel layers need, over a process group the caller created.

A row-parallel projection ends in an all-reduce of partial sums; the vocab-parallel LM head ends in an
all-gather of logits shards. The torch.distributed group is passed in (never looked up as a global),
and a single rank makes both calls return their input untouched: no op, no copy, so the one-GPU model
runs exactly as it did before tensor parallelism existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from graphrun.errors import ConfigError
from graphrun.llm.parallel.config import ParallelConfig


@dataclass(frozen=True, slots=True)
class ParallelGroup:
    """This rank's place (config) and the process group joining all ranks (None for a single rank)."""

    config: ParallelConfig
    process_group: dist.ProcessGroup | None = None

    def __post_init__(self) -> None:
        if self.config.is_single:
            return
        if self.process_group is None:
            raise ConfigError(
                f"tensor parallel size {self.config.world_size} needs a torch.distributed process group; "
                "pass the group the ranks were started with"
            )
        size, rank = dist.get_world_size(self.process_group), dist.get_rank(self.process_group)
        if (size, rank) != (self.config.world_size, self.config.rank):
            raise ConfigError(
                f"the process group has world size {size}, rank {rank}, but the parallel config says "
                f"{self.config.world_size}, {self.config.rank}; build both from the same launch"
            )

    @classmethod
    def single(cls) -> ParallelGroup:
        """One rank, no process group: every collective is the identity."""
        return cls(ParallelConfig())

    @property
    def world_size(self) -> int:
        return self.config.world_size

    @property
    def rank(self) -> int:
        return self.config.rank

    def all_reduce(self, partial: torch.Tensor) -> torch.Tensor:
        """Sum of every rank's `partial` (same shape on all), summed in place; `partial` on one rank."""
        if self.process_group is None:
            return partial
        dist.all_reduce(partial, group=self.process_group)
        return partial

    def all_gather(self, shard: torch.Tensor) -> torch.Tensor:
        """Every rank's `shard` joined along the last dimension, in rank order; `shard` on one rank."""
        if self.process_group is None:
            return shard
        shard = shard.contiguous()
        shards = [torch.empty_like(shard) for _ in range(self.world_size)]
        dist.all_gather(shards, shard, group=self.process_group)
        return torch.cat(shards, dim=-1)
