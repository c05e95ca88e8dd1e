"""A tensor-parallel worker rank: `python -m graphrun.llm.rank_worker FOLDER RANK`, started by rank 0.

It reads its plan from FOLDER (parallel/ranks.py), joins the groups, builds the same LLMEngine as rank 0
over its shard, and then, until told to stop, takes rank 0's command for each step, applies its events
to its engine and steps (parallel/link.py says why the ranks replicate the scheduler). Its step's
outputs are dropped: rank 0 alone answers requests. Any exception ends the worker with its traceback
written where rank 0 reads it, and exit code 1. It logs its INFO lines at DEBUG (rank 0 says the same
at INFO), warnings and errors as they are, prefixed with its rank. It sits above the engine it runs
(not in parallel/, which the engine imports).
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

from graphrun.llm.engine import LLMEngine
from graphrun.llm.parallel.commands import Abort, StepCommand
from graphrun.llm.parallel.control import RankDivergence, broadcast_command
from graphrun.llm.parallel.ranks import PLAN_FILE, WorkerPlan, error_file, join_as_worker, rank_device

log = logging.getLogger(__name__)


def main(argv: list[str]) -> None:
    """The worker process: never returns (os._exit: 0 after stop, 1 after an error)."""
    workdir, rank = Path(argv[0]), int(argv[1])
    _watch_parent(os.getppid())
    try:
        plan: WorkerPlan = pickle.loads((workdir / PLAN_FILE).read_bytes())
        _configure_logging(plan.log_level, rank)
        run_worker(plan, workdir, rank)
        code = 0
    except BaseException:
        error_file(workdir, rank).write_text(traceback.format_exc())
        log.exception("tensor-parallel rank %d failed", rank)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter finalization: nothing is left to clean, and it can take seconds


def run_worker(plan: WorkerPlan, workdir: Path, rank: int) -> None:
    """Join, build the engine, follow rank 0's commands until stop."""
    device = rank_device(plan.config, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    groups = join_as_worker(workdir, rank, plan.world_size, device)
    engine = LLMEngine(plan.config, ranks=groups)
    try:
        while True:
            command = broadcast_command(groups.control, None)
            if command.stop:
                log.debug("rank %d: stop", rank)
                return
            apply_command(engine, command)
            engine.step()
    finally:
        engine.close()


def apply_command(engine: LLMEngine, command: StepCommand) -> None:
    """Apply rank 0's events in order, as rank 0 applied them; the seq ids must come out the same."""
    for event in command.events:
        if isinstance(event, Abort):
            engine.abort(event.seq_id)
            continue
        prompt = list(event.prompt_ids)
        if event.choices:
            seq_ids = engine.add_choices(prompt, event.params, len(event.seq_ids))
        else:
            seq_ids = [engine.add_request(prompt, event.params)]
        if tuple(seq_ids) != event.seq_ids:
            raise RankDivergence(f"rank 0 admitted seq ids {list(event.seq_ids)}, this rank {seq_ids}")
    engine.async_scheduling = command.async_scheduling


def _watch_parent(parent: int) -> None:
    """Exit when rank 0's process is gone (this process was handed to another parent)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="graphrun-parent-watch", daemon=True).start()


class _DemoteInfo(logging.Filter):
    """INFO becomes DEBUG (rank 0 reports start-up); records below `threshold` are dropped."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return record.levelno >= self.threshold


def _configure_logging(level: int, rank: int) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s"))
    handler.addFilter(_DemoteInfo(level))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


if __name__ == "__main__":
    main(sys.argv[1:])
