"""One engine's tie to the other tensor-parallel ranks: the per-step command, the batch check, the end.

The issue asked for "the scheduler on rank 0 broadcasts each step's inputs". We chose instead a
replicated scheduler fed by rank 0's events, as SGLang's TP ranks do: every rank runs the same
LLMEngine (its model shard, KV cache, graphs and scheduler), and rank 0 broadcasts, once per step before
scheduling, what it heard from outside (new requests with their token ids, sampling parameters and seq
ids; aborts; stop: commands.py). Scheduling is a pure function of those events and of the sampled
tokens, which are identical on every rank (all-gathered logits, per-row seeds). This keeps one engine
code path for every rank and every feature (prefix cache, choices, grammars, async scheduling), and
pickles a few small records per step instead of sequences, block tables and grammar matchers. It is
guarded: each step every rank's scheduled batch is fingerprinted and compared (control.py), so ranks
that drift apart stop the engine with RankDivergence instead of computing garbage.

Once any step fails on any rank the ranks' collectives are out of step for good: the link is dead, and
every later step raises the same EngineDeadError (a RankFailure naming the worker that exited, when one
did).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from graphrun.errors import EngineDeadError
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.parallel.commands import RankEvent, StepCommand
from graphrun.llm.parallel.control import RankGroups, broadcast_command, check_same_batch, min_across_ranks
from graphrun.llm.parallel.ranks import RankFailure, Workers

log = logging.getLogger(__name__)


class RankLink:
    """The groups of this rank, and on rank 0 the workers and the events not yet sent to them."""

    def __init__(self, groups: RankGroups, workers: Workers | None = None) -> None:
        self.groups = groups
        self._workers = workers
        self._events: list[RankEvent] = []
        self._num_steps = 0
        self._dead: EngineDeadError | None = None
        self._exited: RankFailure | None = None  # seen by the workers' watch thread
        self._closed = False
        if workers is not None:
            workers.watch(self._on_worker_exit)

    @classmethod
    def lead(cls, config: EngineConfig, device: torch.device) -> RankLink:
        """Rank 0: start the other ranks and join them (the workers are stopped if joining fails)."""
        workers = Workers(config, logging.getLogger().getEffectiveLevel())
        try:
            return cls(workers.join(device), workers)
        except BaseException:
            workers.stop(timeout_s=0.0)
            raise

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (rank 0; empty on a worker)."""
        return self._workers.pids if self._workers is not None else []

    def record(self, event: RankEvent) -> None:
        """(rank 0) An add or abort applied here, for the other ranks to apply before the next step."""
        self._events.append(event)

    def begin_step(self, async_scheduling: bool) -> None:
        """Before scheduling: rank 0 checks its workers and sends them this step's command."""
        if self._dead is not None:
            raise self._dead
        if self._workers is None:
            return
        self._workers.check()
        command = StepCommand(tuple(self._events), async_scheduling)
        self._events.clear()
        broadcast_command(self.groups.control, command)

    def end_step(self) -> None:
        """After a step returned: raise if a worker exited meanwhile (its outputs cannot be trusted)."""
        if self._exited is not None:
            raise self._exited

    def _on_worker_exit(self, failure: RankFailure) -> None:
        """(the watch thread) A worker is gone: unblock a step waiting on it in an NCCL collective."""
        self._exited = failure
        group = self.groups.model.process_group
        if group is not None and dist.get_backend(group) == "nccl":
            log.error("%s; aborting the NCCL group", failure)
            group.abort()

    def check_batch(self, fingerprint: int) -> None:
        """After scheduling, every rank: the same batch everywhere, else RankDivergence."""
        check_same_batch(self.groups.control, self._num_steps, fingerprint)
        self._num_steps += 1

    def min_blocks(self, num_blocks: int) -> int:
        """The KV block count every rank can hold: the smallest of the ranks' counts."""
        fewest = min_across_ranks(self.groups.control, num_blocks)
        if fewest < num_blocks:
            log.debug("KV cache: %d blocks fit this rank, %d fit every rank", num_blocks, fewest)
        return fewest

    def fail(self, error: Exception) -> EngineDeadError:
        """A step raised: the error the engine raises now and at every later step (the worker that exited
        when one did, else `error` marked fatal)."""
        if isinstance(error, EngineDeadError):
            dead = error
        else:
            exited = self._exited or (self._workers.failure() if self._workers is not None else None)
            dead = exited or EngineDeadError(
                f"rank {self.groups.rank}'s step failed under tensor parallelism "
                f"({type(error).__name__}: {error}); the ranks cannot continue in step"
            )
        self._dead = dead
        return dead

    def abandon(self) -> None:
        """Start-up failed on this rank: close without the stop command (the others are not listening)."""
        if self._dead is None:
            self._dead = EngineDeadError(f"rank {self.groups.rank}'s start-up failed")
        self.close()

    def close(self) -> None:
        """Rank 0: send stop while the ranks are healthy; leave the groups (which closes this rank's
        connections, so a worker waiting on them fails at once); then reap every worker, killing those
        that have not exited within a few seconds. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._workers is not None:
            self._workers.unwatch()
        if self._exited is not None and self._dead is None:
            self._dead = self._exited
        if self._workers is not None and self._dead is None:
            try:
                broadcast_command(self.groups.control, StepCommand(stop=True))
            except RuntimeError as exc:  # a worker is already gone: it is reaped below
                log.debug("stop command not delivered: %s", exc)
        if dist.is_initialized():
            dist.destroy_process_group()
        if self._workers is not None:
            self._workers.stop(timeout_s=10.0 if self._dead is None else 5.0)
