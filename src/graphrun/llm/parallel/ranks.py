"""Starting, joining and watching the tensor-parallel ranks: rank 0 (the engine's process) owns the rest.

Rank 0 starts ranks 1..N-1 as fresh interpreters (`python -m graphrun.llm.rank_worker`, the spawn
start method's semantics: nothing inherited but the environment, and it works from a daemonic process
such as the server's engine process, which multiprocessing forbids to have children). Their plan (the
engine config, the world size, the log level) waits in a private temporary folder that also holds the
rendezvous FileStore. Each worker marks itself ready in the store before joining; rank 0 waits for
every mark while watching the workers, so one that dies at start-up fails the engine at once instead of
leaving rank 0 in the rendezvous until its timeout.

Groups: the default group carries the model's collectives (NCCL on GPUs, rank r on cuda:r, its
communicator created at once, before any capture; gloo on the CPU) and a gloo group carries the control
plane (control.py). A worker whose step raises writes its traceback to the folder and exits 1; rank 0
reads it when it notices the exit (RankFailure). A worker that is killed closes its gloo connections, so
rank 0's next control or gloo collective fails within seconds; rank 0 then names the rank and its exit
code. NCCL notices no closed connection (a collective waits for the dead peer until NCCL's own timeout),
so rank 0 also watches its workers from a thread (Workers.watch) and aborts the NCCL group at once when
one exits: the blocked step returns, and the engine raises the RankFailure. Workers watch their parent
too and exit when it is gone: none outlives rank 0.
"""

from __future__ import annotations

import datetime
import logging
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from graphrun.errors import ConfigError, EngineDeadError
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.parallel.config import ParallelConfig
from graphrun.llm.parallel.control import RankGroups
from graphrun.llm.parallel.group import ParallelGroup

log = logging.getLogger(__name__)

WORKER_MODULE = "graphrun.llm.rank_worker"
START_TIMEOUT_S = 300.0  # a worker imports torch and joins the rendezvous within this
# a worker waits this long for rank 0's next command (an idle server sends none); a dead rank 0 is seen
# sooner, by its closed connections and by the worker's parent watch
IDLE_LIMIT = datetime.timedelta(days=365)
PLAN_FILE = "plan.pkl"


class RankFailure(EngineDeadError):
    """A tensor-parallel worker rank exited (crashed, killed, or its step raised)."""

    def __init__(self, rank: int, exit_code: int, detail: str) -> None:
        self.rank, self.exit_code = rank, exit_code
        how = f"was killed by signal {-exit_code}" if exit_code < 0 else f"exited with code {exit_code}"
        super().__init__(f"tensor-parallel rank {rank} {how}" + (f":\n{detail}" if detail else ""))


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What a worker reads at start: the engine to build, the world size, and rank 0's log level."""

    config: EngineConfig
    world_size: int
    log_level: int


def error_file(workdir: Path, rank: int) -> Path:
    """Where worker `rank` writes the traceback of the exception that ends it."""
    return workdir / f"rank{rank}.error"


def join_as_worker(workdir: Path, rank: int, world_size: int, device: torch.device) -> RankGroups:
    """A worker's groups: mark this rank ready, then join rank 0's rendezvous."""
    store = _store(workdir, world_size)
    store.set(f"ready/{rank}", "1")
    return _init_groups(store, rank, world_size, device)


class Workers:
    """Rank 0's handle on ranks 1..N-1: started, joined, watched and stopped."""

    def __init__(self, config: EngineConfig, log_level: int) -> None:
        if dist.is_initialized():
            raise ConfigError(
                "this process already has a torch.distributed group (another tensor-parallel engine?); "
                "close that engine first: one tensor-parallel engine per process"
            )
        self.world_size = config.tensor_parallel_size
        self._folder = tempfile.TemporaryDirectory(prefix="graphrun-tp-")
        self.workdir = Path(self._folder.name)
        plan = WorkerPlan(config, self.world_size, log_level)
        (self.workdir / PLAN_FILE).write_bytes(pickle.dumps(plan))
        self._unwatched = threading.Event()  # set when watch()'s thread should stop
        self._watcher: threading.Thread | None = None
        self._processes = {
            rank: subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, str(self.workdir), str(rank)], stdin=subprocess.DEVNULL
            )
            for rank in range(1, self.world_size)
        }
        log.info("tensor parallel: started ranks 1..%d (pids %s)", self.world_size - 1, self.pids)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes.values()]

    def join(self, device: torch.device) -> RankGroups:
        """Wait until every worker is ready (failing at once if one exits), then join as rank 0."""
        store = _store(self.workdir, self.world_size)
        waiting = [f"ready/{rank}" for rank in self._processes]
        deadline = time.monotonic() + START_TIMEOUT_S
        while waiting:
            self.check()
            if time.monotonic() > deadline:
                raise EngineDeadError(
                    f"tensor-parallel ranks not ready after {START_TIMEOUT_S:.0f} s: {waiting}"
                )
            waiting = [key for key in waiting if not store.check([key])]
            if waiting:
                time.sleep(0.05)
        return _init_groups(store, 0, self.world_size, device)

    def check(self) -> None:
        """Raise the RankFailure of the first worker that has exited."""
        for rank, process in self._processes.items():
            code = process.poll()
            if code is not None:
                raise RankFailure(rank, code, self._detail(rank))

    def watch(self, on_exit: Callable[[RankFailure], None], period_s: float = 0.2) -> None:
        """Call on_exit (from a thread of its own) with the first worker exit seen, until unwatch()."""
        self._unwatched.clear()

        def poll() -> None:
            while not self._unwatched.is_set():
                try:
                    self.check()
                except RankFailure as failure:
                    if not self._unwatched.is_set():
                        on_exit(failure)
                    return
                self._unwatched.wait(period_s)

        self._watcher = threading.Thread(target=poll, name="graphrun-tp-watch", daemon=True)
        self._watcher.start()

    def unwatch(self, timeout_s: float = 5.0) -> None:
        """Stop reporting exits (before the workers are told to stop) and wait for the watch thread to end.

        Joined, not left to end on its own: its on_exit holds the engine's rank link, and a daemon thread
        dropping the link's last reference frees the process groups there; racing with interpreter exit,
        that thread is stopped inside the groups' destructor and the process aborts ('terminate called
        without an active exception': the rare SIGABRT at the end of `generate -tp 2`, from a core dump).
        """
        self._unwatched.set()
        watcher, self._watcher = self._watcher, None
        if watcher is None or watcher is threading.current_thread():
            return
        watcher.join(timeout_s)
        if watcher.is_alive():  # on_exit is still running (aborting a group): leave it, it ends on its own
            log.warning("the tensor-parallel watch thread did not end in %.0f s", timeout_s)

    def failure(self, grace_s: float = 5.0) -> RankFailure | None:
        """After a collective failed: the worker that exited, waiting up to grace_s for its exit to show."""
        deadline = time.monotonic() + grace_s
        while True:
            try:
                self.check()
            except RankFailure as failure:
                return failure
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Wait for the workers to exit (after the stop command), kill the others, remove the folder."""
        self.unwatch()
        deadline = time.monotonic() + timeout_s
        for rank, process in self._processes.items():
            try:
                process.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                log.warning("tensor-parallel rank %d did not stop in %.0f s; killing it", rank, timeout_s)
                process.kill()
                process.wait()
        self._folder.cleanup()

    def _detail(self, rank: int) -> str:
        path = error_file(self.workdir, rank)
        return path.read_text().strip() if path.exists() else ""


def _store(workdir: Path, world_size: int) -> dist.FileStore:
    return dist.FileStore(str(workdir / "store"), world_size)


def _init_groups(store: dist.Store, rank: int, world_size: int, device: torch.device) -> RankGroups:
    cuda = device.type == "cuda"
    dist.init_process_group(
        "nccl" if cuda else "gloo", store=store, rank=rank, world_size=world_size,
        device_id=device if cuda else None,  # NCCL: the communicator now, before any capture
    )  # fmt: skip
    control = dist.new_group(backend="gloo", timeout=IDLE_LIMIT)
    assert control is not None  # every rank is a member
    return RankGroups(ParallelGroup(ParallelConfig(world_size, rank), dist.group.WORLD), control)


def rank_device(config: EngineConfig, rank: int) -> torch.device:
    """Where `rank` runs: cuda:rank on a CUDA machine, else the CPU (gloo)."""
    device = config.resolved_device()
    return torch.device("cuda", rank) if device.type == "cuda" else device
