"""The engine in a process of its own: what crosses the pipe, and what happens when that process dies."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest
from serve_harness import live_server, wait_until

from graphrun.llm.scheduler import RequestRejected
from graphrun.serve.host.messages import EngineFailure, Unavailable
from graphrun.serve.host.transport import PipeTransport, portable_error

PATIENCE = 120.0  # the bound on each wait for a running server: only a broken one reaches it
BODY = {"model": "tiny", "prompt": "pipe", "max_tokens": 8, "temperature": 0, "ignore_eos": True}


def test_errors_cross_the_pipe_with_their_fields_or_as_their_kind():
    rejected = portable_error(RequestRejected("too long", "too_long", "prompt"))
    assert isinstance(rejected, RequestRejected) and (rejected.code, rejected.param) == ("too_long", "prompt")

    class Unpicklable(ValueError):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(f"{a}/{b}")

    class Local(RuntimeError):  # a class pickle cannot find by name
        pass

    value_error = portable_error(Unpicklable(1, 2))
    assert type(value_error) is ValueError and "Unpicklable: 1/2" in str(value_error)  # still a 400
    assert type(portable_error(Local("x"))) is EngineFailure  # still a 500
    gone = portable_error(Unavailable("stopped", "bye"))
    assert isinstance(gone, Unavailable) and gone.reason == "stopped"


def test_health_metrics_and_answers_come_from_the_engine_process():
    with live_server(engine_process=True) as srv:
        assert isinstance(srv.worker.transport, PipeTransport)
        health = httpx.get(srv.url + "/health", timeout=PATIENCE).json()
        assert health["engine_pid"] == srv.worker.transport.pid != os.getpid()
        assert health["memory"]["max_rss_bytes"] > 2**20 and health["memory"]["server_max_rss_bytes"] > 2**20
        answer = httpx.post(srv.url + "/v1/completions", json=BODY, timeout=PATIENCE).json()
        assert answer["usage"]["completion_tokens"] == 8
        text = srv.metrics()
        # one scrape joins this process's series and the engine process's, each family once
        families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
        assert len(families) == len(set(families))
        assert srv.metric("graphrun_requests_total", 'status="ok"') == 1
        assert srv.metric("graphrun_generation_tokens_total") == 8
        assert srv.metric("graphrun_cuda_graph_captured_total", 'runner="decode-greedy"') >= 1
        too_long = {**BODY, "max_tokens": 10_000}
        assert httpx.post(srv.url + "/v1/completions", json=too_long, timeout=PATIENCE).status_code == 400


def test_a_dead_engine_process_fails_the_requests_in_flight_and_the_server_says_failed():
    with live_server({"max_model_len": 2048}, engine_process=True) as srv:
        body = {**BODY, "max_tokens": 2000, "stream": True}
        with (
            httpx.Client(timeout=PATIENCE) as http,
            http.stream("POST", srv.url + "/v1/completions", json=body) as response,
        ):
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            pid = srv.worker.transport.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            events = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
        last = json.loads(events[-1])
        assert last["error"]["type"] == "server_error" and "exit status -9" in last["error"]["message"]
        assert wait_until(lambda: srv.worker.state == "failed", timeout=PATIENCE)
        assert srv.worker.num_in_flight == 0
        health = httpx.get(srv.url + "/health", timeout=PATIENCE)
        assert health.status_code == 503 and health.json()["status"] == "failed"
        answer = httpx.post(srv.url + "/v1/completions", json=BODY, timeout=PATIENCE)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "failed"


@pytest.mark.parametrize("engine_process", [False, True])
def test_a_model_that_cannot_load_fails_start_up_in_either_mode(engine_process):
    bad = live_server({"model": "no-such-preset"}, engine_process=engine_process)
    with pytest.raises(AssertionError, match="did not start: failed"), bad:
        pass
