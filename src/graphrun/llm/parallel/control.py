"""The tensor-parallel control plane: commands, batch fingerprints and block counts over a gloo group.

The model's collectives run on their own group (NCCL on GPUs): these small host-side exchanges must not
queue behind a step's kernels, and need Python objects and CPU tensors, which gloo carries. On the CPU
both groups are gloo. Each function is one collective: every rank of the group must call it, in the
same order (the engine's step does, on every rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from graphrun.errors import EngineDeadError
from graphrun.llm.parallel.commands import StepCommand
from graphrun.llm.parallel.group import ParallelGroup


class RankDivergence(EngineDeadError):
    """The ranks scheduled different batches in one step: their engines no longer agree."""


@dataclass(frozen=True, slots=True)
class RankGroups:
    """A rank's two process groups: the model's collectives and the gloo control group."""

    model: ParallelGroup
    control: dist.ProcessGroup

    @property
    def rank(self) -> int:
        return self.model.rank

    @property
    def world_size(self) -> int:
        return self.model.world_size


def broadcast_command(control: dist.ProcessGroup, command: StepCommand | None) -> StepCommand:
    """Rank 0 passes its command; every other rank passes None and gets rank 0's."""
    box: list[StepCommand | None] = [command]
    dist.broadcast_object_list(box, src=0, group=control)
    received = box[0]
    if not isinstance(received, StepCommand):
        raise RuntimeError(f"rank 0 sent {type(received).__name__}, not a StepCommand")
    return received


def min_across_ranks(control: dist.ProcessGroup, value: int) -> int:
    """The smallest `value` any rank holds (e.g. KV blocks: every rank's cache must fit them)."""
    flag = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=control)
    return int(flag.item())


def check_same_batch(control: dist.ProcessGroup, step: int, fingerprint: int) -> None:
    """Every rank's batch fingerprint of this step, compared: a RankDivergence on every rank if any
    differs."""
    mine = torch.tensor([fingerprint], dtype=torch.int64)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size(control))]
    dist.all_gather(every, mine, group=control)
    compare_fingerprints(step, [int(t.item()) for t in every])


def compare_fingerprints(step: int, fingerprints: list[int]) -> None:
    """Raise RankDivergence naming the step and the ranks whose fingerprint is not rank 0's."""
    odd = [rank for rank, fp in enumerate(fingerprints) if fp != fingerprints[0]]
    if odd:
        raise RankDivergence(
            f"tensor-parallel ranks diverged at step {step}: rank(s) {odd} scheduled a different batch "
            f"than rank 0 (fingerprints {fingerprints}); the engine stops rather than compute garbage"
        )
