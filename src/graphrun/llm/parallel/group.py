"""The collectives tensor-parallel layers need, over a process group the caller created.

A row-parallel projection ends in an all-reduce of partial sums; the vocab-parallel LM head ends in an
all-gather of logits shards. The torch.distributed group is passed in (never looked up as a global),
and a single rank makes both calls return their input untouched: no op, no copy, so the one-GPU model
runs exactly as it did before tensor parallelism existed.

Both are torch's functional collectives (`_c10d_functional` ops: the collective, then `wait_tensor` on
its result, always back to back), not `dist.all_reduce`: they are dispatcher ops with a tensor result,
so a recorder of ops (the sim backend) and torch.fx see and replay them, and on NCCL they are captured
into a CUDA graph like any kernel (ProcessGroupNCCL skips its watchdog queue while a stream captures,
pytorch#103503). The wait must sit in the same graph as its collective (pytorch#192000): it does here.
NCCL must be initialised before the first capture; the runner's eager warm-up runs every collective
once before capturing.

agree() is not for graphs: it joins the ranks' capture verdicts (RunnerOptions.agree), outside capture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from graphrun.errors import ConfigError
from graphrun.llm.parallel.config import ParallelConfig

_functional = torch.ops._c10d_functional  # collectives with tensor results (see the module docstring)


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
        _functional.all_reduce_(partial, "sum", self.process_group.group_name)
        return _functional.wait_tensor(partial)

    def all_gather(self, shard: torch.Tensor) -> torch.Tensor:
        """Every rank's `shard` joined along the last dimension, in rank order; `shard` on one rank."""
        if self.process_group is None:
            return shard
        name = self.process_group.group_name
        stacked = _functional.wait_tensor(
            _functional.all_gather_into_tensor(shard.contiguous(), self.world_size, name)
        )  # (world_size * shard.shape[0], *shard.shape[1:]): the shards stacked along dim 0
        return torch.cat(stacked.chunk(self.world_size), dim=-1)

    def agree(self, ok: bool) -> bool:
        """True on every rank when `ok` is True on every rank, else False on all (a MIN all-reduce).

        Eager, never inside a graph: the runner calls it between capture phases (RunnerOptions.agree).
        """
        if self.process_group is None:
            return ok
        flag = torch.tensor([int(ok)], dtype=torch.int32, device=self._collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.process_group)
        return bool(flag.item())

    def _collective_device(self) -> torch.device:
        """NCCL reduces CUDA tensors only (this process's current GPU); gloo reduces CPU ones."""
        if dist.get_backend(self.process_group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
