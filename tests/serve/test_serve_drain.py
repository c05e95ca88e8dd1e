"""SIGTERM drains: `python -m graphrun serve` finishes the request in flight, says 503 meanwhile, exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from serve_harness import wait_until

MAX_TOKENS = 600  # a few seconds of eager decode on a CPU: the drain has something to wait for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path):
    port = _free_port()
    log_path = tmp_path / "server.log"
    args = ["--model", "tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024",
            "--max-num-seqs", "4", "--drain-seconds", "30"]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "graphrun", "serve", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
            start_new_session=True,  # its own process group, as a terminal gives it (Ctrl-C hits the group)
        )
    url = f"http://127.0.0.1:{port}"
    try:
        healthy = wait_until(lambda: httpx.get(url + "/health", timeout=2).status_code == 200, timeout=60)
        assert healthy, log_path.read_text()
        yield proc, url, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_sigterm_finishes_the_request_in_flight_then_exits_0(server, how):
    """SIGTERM to the server, or SIGINT to its whole process group (Ctrl-C: the engine process gets it
    too and must keep running until the server has drained)."""
    proc, url, log_path = server
    body = {"prompt": "drain me", "max_tokens": MAX_TOKENS, "stream": True, "ignore_eos": True,
            "temperature": 0, "stream_options": {"include_usage": True}}  # fmt: skip
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", url + "/v1/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        # draining: the socket still answers, with 503, until the request in flight is done
        assert wait_until(lambda: httpx.get(url + "/health", timeout=2).status_code == 503, timeout=5)
        refused = httpx.post(url + "/v1/completions", json={"prompt": "late"}, timeout=5)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        events = [line.removeprefix("data: ") for line in lines if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert proc.wait(timeout=30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)
    log = log_path.read_text()
    assert "no CUDA device: decode runs eager" in log or "graphs: on" in log
    assert f"serving tiny on {url}" in log
    assert ("SIGTERM" if how == "sigterm" else "SIGINT") + ": draining" in log


def test_the_server_exits_1_when_its_engine_process_dies(server):
    proc, url, log_path = server
    engine_pid = httpx.get(url + "/health", timeout=5).json()["engine_pid"]
    assert engine_pid != proc.pid
    os.kill(engine_pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == 1  # for its supervisor to restart it
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
    engine_pid = httpx.get(url + "/health", timeout=5).json()["engine_pid"]
    proc.kill()  # no drain, no stop command: the engine process sees its pipe close
    proc.wait(10)
    assert wait_until(lambda: not _running(engine_pid), timeout=20)
