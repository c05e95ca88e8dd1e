"""SIGTERM drains: `python -m graphrun serve` finishes the request in flight, says 503 meanwhile, exits 0;
a request the drain deadline cuts ends with an error the client sees, never with a finish reason.

Every wait here is for an event (a stream's end, a status, an exit) under a generous bound that only a
broken server reaches: the suite must pass on a busy 2-core machine too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from app_servers import START_TIMEOUT
from serve_harness import wait_until

from graphrun.bench.serve_process import free_port

# several seconds of eager decode on a CPU: the drain has something to wait for (600 once ran out before
# the late request of the SIGTERM test reached the draining server, in a fresh-clone CI run)
MAX_TOKENS = 1000
# the cut test needs both requests in the engine at once: the stream must outlast the second request's
# arrival even on a loaded 2-core CI machine (it is cut by the drain, so its length costs nothing)
CUT_TOKENS = 1000
PATIENCE = 120.0  # the bound on each wait for a running server (a stream's next line, an exit, a status)
NEVER = 3600.0  # a drain deadline no test reaches: the request in flight always finishes

Server = tuple[subprocess.Popen[bytes], str, Path]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[float], Server]]:
    """Starts `python -m graphrun serve` with a drain deadline; waits until /health says ready."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(drain_seconds: float) -> Server:
        port = free_port()
        log_path = tmp_path / "server.log"
        args = ["--model", "tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024",
                "--max-num-seqs", "4", "--drain-seconds", str(drain_seconds)]  # fmt: skip
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "graphrun", "serve", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ.copy(),
                start_new_session=True,  # its own process group, as a terminal gives (Ctrl-C hits the group)
            )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        ready = lambda: proc.poll() is not None or httpx.get(url + "/health", timeout=5).status_code == 200  # noqa: E731
        assert wait_until(ready, timeout=START_TIMEOUT) and proc.poll() is None, log_path.read_text()
        return proc, url, log_path

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(PATIENCE)


@pytest.fixture
def server(start_server: Callable[[float], Server]) -> Server:
    return start_server(NEVER)


def _long_stream(http: httpx.Client, url: str, max_tokens: int = MAX_TOKENS) -> httpx.Response:
    body = {"prompt": "drain me", "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "temperature": 0, "stream_options": {"include_usage": True}}  # fmt: skip
    return http.stream("POST", url + "/v1/completions", json=body)


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_sigterm_finishes_the_request_in_flight_then_exits_0(server, how):
    """SIGTERM to the server, or SIGINT to its whole process group (Ctrl-C: the engine process gets it
    too and must keep running until the server has drained)."""
    proc, url, log_path = server
    with httpx.Client(timeout=PATIENCE) as http, _long_stream(http, url) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        # draining: the socket still answers, with 503, until the request in flight is done
        draining = lambda: httpx.get(url + "/health", timeout=5).status_code == 503  # noqa: E731
        assert wait_until(draining, timeout=PATIENCE)
        refused = httpx.post(url + "/v1/completions", json={"prompt": "late"}, timeout=PATIENCE)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        events = [line.removeprefix("data: ") for line in lines if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert proc.wait(timeout=PATIENCE) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)
    log = log_path.read_text()
    assert "no CUDA device: decode runs eager" in log or "graphs: on" in log
    assert f"serving tiny on {url}" in log
    assert ("SIGTERM" if how == "sigterm" else "SIGINT") + ": draining" in log


def test_the_server_exits_1_when_its_engine_process_dies(server):
    proc, url, log_path = server
    engine_pid = httpx.get(url + "/health", timeout=PATIENCE).json()["engine_pid"]
    assert engine_pid != proc.pid
    os.kill(engine_pid, signal.SIGKILL)
    assert proc.wait(timeout=PATIENCE) == 1  # for its supervisor to restart it
    assert "the engine process exited (exit status -9)" in log_path.read_text()


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_the_engine_process_stops_when_the_server_is_killed(server):
    proc, url, _ = server
    engine_pid = httpx.get(url + "/health", timeout=PATIENCE).json()["engine_pid"]
    proc.kill()  # no drain, no stop command: the engine process sees its pipe close
    proc.wait(PATIENCE)
    assert wait_until(lambda: not _running(engine_pid), timeout=PATIENCE)


def _metric(url: str, name: str) -> float:
    """One unlabelled sample of /metrics."""
    for line in httpx.get(url + "/metrics", timeout=PATIENCE).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no sample {name} in /metrics")


def test_a_drain_deadline_that_cuts_requests_ends_them_with_errors_the_clients_see(start_server):
    """--drain-seconds 0 and two long requests in flight: the stream's last event is an error (no
    finish_reason, no [DONE]) and the collected answer is a 503, never a short answer that looks done."""
    proc, url, log_path = start_server(0)
    answers: list[httpx.Response] = []
    body = {"prompt": "cut me", "max_tokens": CUT_TOKENS, "ignore_eos": True, "temperature": 0}
    post = lambda: answers.append(httpx.post(url + "/v1/completions", json=body, timeout=PATIENCE))  # noqa: E731
    collected = threading.Thread(target=post)
    with httpx.Client(timeout=PATIENCE) as http, _long_stream(http, url, CUT_TOKENS) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        collected.start()
        in_engine = lambda: _metric(url, "graphrun_requests_running") + _metric(url, "graphrun_queue_depth")  # noqa: E731
        assert wait_until(lambda: in_engine() == 2, timeout=PATIENCE)  # running, or waiting for KV blocks
        proc.send_signal(signal.SIGTERM)
        events = [line.removeprefix("data: ") for line in lines if line]
    collected.join(PATIENCE)
    error = json.loads(events[-1])["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "draining")
    assert "drain deadline" in error["message"]
    chunks = [json.loads(e) for e in events[:-1]]
    assert 0 < len(chunks) < CUT_TOKENS and "[DONE]" not in events
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert answers[0].status_code == 503 and answers[0].json()["error"]["code"] == "draining"
    assert proc.wait(timeout=PATIENCE) == 0
    assert "drain deadline: ending 2 requests with a 503 error" in log_path.read_text()
