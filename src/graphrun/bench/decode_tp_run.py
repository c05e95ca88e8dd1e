"""`graphrun bench decode --tp 1 2`: per tensor-parallel size, fresh rank processes run decode_tp.py's job.

Each size gets its own N processes (spawned: nothing inherited but the environment), TP=1 included, so
every size starts from the same clean state: no allocator cache, graph pool or NCCL communicator left by
the size before. The launching process only waits: rank r runs on cuda:r with an NCCL group for the
model's collectives (its communicator created at once, before any capture), or on gloo with CPU tensors
(tests). Rank 0 writes its result to a private folder, which this process reads once every rank has
exited. A rank that raises ends the size's run: the others are killed and the error names the rank; so is
a size that runs past its time limit. A failed size keeps the sizes measured before it in the report.
"""

from __future__ import annotations

import datetime
import logging
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from graphrun.bench.decode_setup import DecodeSetup
from graphrun.bench.decode_tp import measure_rank
from graphrun.bench.decode_tp_report import print_tp, save_tp, tp_payload
from graphrun.bench.report import written
from graphrun.llm.parallel.config import ParallelConfig
from graphrun.llm.parallel.group import ParallelGroup

log = logging.getLogger(__name__)

RESULT_FILE = "result.pkl"
TIMEOUT_S = 900.0  # one tensor-parallel size: start-up, capture and every batch size
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=300)  # a rank's capture may keep the others waiting


def run_decode_tp(setup: DecodeSetup) -> int:
    """Every --tp size in turn, then the table, goals and JSON; exit status 1 when a size failed."""
    measured: dict[int, dict[str, Any]] = {}
    errors: dict[int, str] = {}
    for size in setup.tp_sizes:
        log.info("decode bench: tensor parallel size %d (%d rank processes)", size, size)
        try:
            measured[size] = run_ranks(setup, size)
        except Exception as exc:  # keep the sizes measured so far
            log.exception("decode bench: tensor parallel size %d failed", size)
            errors[size] = f"{type(exc).__name__}: {exc}"
    payload = tp_payload(setup, measured, errors)
    print_tp(payload)
    log.info("decode bench: wrote %s", written(*save_tp(payload, setup.out)))
    return 0 if payload["ok"] else 1


def run_ranks(setup: DecodeSetup, world_size: int, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """decode_tp.measure_rank on `world_size` fresh processes; rank 0's result."""
    backend = "nccl" if setup.cuda else "gloo"
    level = logging.getLogger().getEffectiveLevel()
    with tempfile.TemporaryDirectory(prefix="graphrun-tp-bench-") as folder:
        context = mp.start_processes(
            _rank_main, (world_size, folder, setup, backend, level), nprocs=world_size, join=False,
            start_method="spawn",
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        try:
            while not context.join(timeout=max(min(deadline - time.monotonic(), 1.0), 0.1)):
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"tensor parallel size {world_size} still running after {timeout_s:.0f} s"
                    )
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                process.join()
        result: dict[str, Any] = pickle.loads((Path(folder) / RESULT_FILE).read_bytes())
    return result


def _rank_main(rank: int, world_size: int, folder: str, setup: DecodeSetup, backend: str, level: int) -> None:
    """One rank's process: join the ranks, run the job, rank 0 writes its result."""
    _configure_logging(level, rank)
    group = ParallelGroup.single()
    if world_size > 1:
        device = None
        if backend == "nccl":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        store = dist.FileStore(str(Path(folder) / "store"), world_size)
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT,
            device_id=device,  # NCCL: the communicator now, before any capture
        )  # fmt: skip
        group = ParallelGroup(ParallelConfig(world_size, rank), dist.group.WORLD)
    try:
        result = measure_rank(group, setup)
    finally:
        if dist.is_initialized():  # the engine's close() has usually left the groups already
            dist.destroy_process_group()
    if result is not None:
        (Path(folder) / RESULT_FILE).write_bytes(pickle.dumps(result))


def _configure_logging(level: int, rank: int) -> None:
    """A spawned process starts without handlers: rank 0 logs at the parent's level, the others warn."""
    logging.basicConfig(
        level=level if rank == 0 else max(level, logging.WARNING),
        format=f"%(asctime)s %(levelname)s [tp rank {rank}] %(name)s: %(message)s",
        force=True,  # a handler the parent's main module set up on import is replaced
    )
