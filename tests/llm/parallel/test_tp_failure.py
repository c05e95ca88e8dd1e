"""A tensor-parallel engine whose worker rank dies or fails: rank 0 raises RankFailure naming the rank
and how it ended (its traceback when its step raised) within a bound, every later step raises it too,
and close() leaves no process behind."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from graphrun.errors import EngineDeadError
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.parallel.commands import NewRequest
from graphrun.llm.parallel.ranks import RankFailure
from graphrun.llm.sampling_params import SamplingParams

BOUND_S = 30.0
PARAMS = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _engine() -> LLMEngine:
    engine = LLMEngine(EngineConfig(model="tiny", max_num_seqs=4, max_model_len=512, tensor_parallel_size=2))
    for n in (5, 9):
        engine.add_request(list(range(1, n)), PARAMS)
    for _ in range(3):
        engine.step()
    return engine


def _step_until_dead(engine: LLMEngine) -> tuple[RankFailure, float]:
    start = time.monotonic()
    with pytest.raises(RankFailure) as failure:
        while time.monotonic() - start < BOUND_S and engine.has_unfinished():
            engine.step()
    return failure.value, time.monotonic() - start


def test_a_killed_worker_fails_rank_zero_within_the_bound_and_nothing_is_left():
    engine = _engine()
    (pid,) = engine.worker_pids
    try:
        os.kill(pid, signal.SIGKILL)
        failure, seconds = _step_until_dead(engine)
        assert seconds < BOUND_S
        assert (failure.rank, failure.exit_code) == (1, -signal.SIGKILL)
        assert "tensor-parallel rank 1 was killed by signal 9" in str(failure)
        with pytest.raises(RankFailure):  # the engine stays dead
            engine.step()
    finally:
        engine.close()
    assert _gone(pid)


def test_a_worker_whose_step_raises_reports_its_traceback_to_rank_zero():
    engine = _engine()
    (pid,) = engine.worker_pids
    try:
        # a request whose seq id rank 1 cannot give it: rank 1's step raises (rank_worker.apply_command)
        engine._link.record(NewRequest((999,), (1, 2, 3), PARAMS, choices=False))  # type: ignore[union-attr]
        failure, seconds = _step_until_dead(engine)
        assert seconds < BOUND_S
        assert (failure.rank, failure.exit_code) == (1, 1)
        assert "Traceback" in str(failure) and "RankDivergence" in str(failure) and "[999]" in str(failure)
        assert isinstance(failure, EngineDeadError)
    finally:
        engine.close()
    assert _gone(pid)


def test_close_stops_the_workers_and_a_second_engine_can_start():
    engine = _engine()
    (pid,) = engine.worker_pids
    engine.close()
    engine.close()  # idempotent
    assert _gone(pid)
    again = LLMEngine(EngineConfig(model="tiny", max_num_seqs=2, max_model_len=64, tensor_parallel_size=2))
    again.close()


def _watching() -> bool:
    return any(t.name == "graphrun-tp-watch" for t in threading.enumerate())


def test_close_ends_the_watch_thread_before_it_returns():
    """The watch thread's callback holds the rank link: left to end on its own after close(), it could drop
    the link's last reference and free the process groups on a daemon thread while the interpreter exits,
    which aborted `generate -tp 2` (SIGABRT, 'terminate called without an active exception', seen in a core
    dump). close() joins it."""
    engine = LLMEngine(EngineConfig(model="tiny", max_num_seqs=2, max_model_len=64, tensor_parallel_size=2))
    assert _watching()
    engine.close()
    assert not _watching()
