"""Run a function on N gloo ranks in spawned CPU processes, bounded in time, none left behind.

Each rank joins a gloo group through a rendezvous file, calls `job(group, *args)` with its
ParallelGroup, and leaves the group. A rank that raises fails the caller with its traceback; ranks
still running at the deadline are killed and the caller gets a TimeoutError.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from graphrun.llm.parallel.config import ParallelConfig
from graphrun.llm.parallel.group import ParallelGroup

Job = Callable[..., None]


def run_ranks(
    job: Job,
    args: tuple[Any, ...],
    world_size: int,
    workdir: Path,
    timeout_s: float = 180,
    backend: str = "gloo",
) -> None:
    """job(group, *args) on world_size spawned processes; returns when all have finished.
    backend "nccl": rank r runs on GPU r, its communicator created at once (before any capture)."""
    rendezvous = workdir / "rendezvous"
    rendezvous.unlink(missing_ok=True)
    context = mp.start_processes(
        _rank_main,
        (world_size, str(rendezvous), job, args, backend),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{world_size} ranks still running after {timeout_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()


def _rank_main(
    rank: int, world_size: int, rendezvous: str, job: Job, args: tuple[Any, ...], backend: str
) -> None:
    device = None
    if backend == "nccl":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method=f"file://{rendezvous}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=60), device_id=device,
    )  # fmt: skip
    # every rank finishes joining before any runs its job: a rank whose job returns at once would
    # otherwise leave the group while a slower rank is still connecting to it ("Connection closed by
    # peer" in that rank's init_process_group, seen on a loaded 2-core CI machine)
    dist.barrier()
    try:
        job(ParallelGroup(ParallelConfig(world_size, rank), dist.group.WORLD), *args)
    finally:
        dist.destroy_process_group()
