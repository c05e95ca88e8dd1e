"""`graphrun serve` from the command line: a model served from a folder is listed and accepted under the
folder's name; --api-key flags replace GRAPHRUN_API_KEY; no key reaches the server's log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
from serve_harness import wait_until
from tiny_checkpoint import write_tiny_checkpoint

from graphrun.bench.serve_process import free_port
from graphrun.serve.config import default_served_model_name

FLAG_KEYS = ("flag-key-5d1c07", "flag-key-a93e2b")
ENV_KEY = "env-key-2f60d8"  # set, but the flags replace it
FOLDER = "my-ckpt"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = write_tiny_checkpoint(tmp_path_factory.mktemp("models") / FOLDER)
    log_path = tmp_path_factory.mktemp("logs") / "server.log"
    port = free_port()
    args = ["--log-level", "DEBUG", "serve", "--model", f"{folder}/", "--port", str(port),
            "--max-model-len", "128", "--max-num-seqs", "2", "--enforce-eager", "--no-engine-process",
            *(arg for key in FLAG_KEYS for arg in ("--api-key", key))]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "graphrun", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GRAPHRUN_API_KEY": ENV_KEY},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        healthy = wait_until(lambda: httpx.get(url + "/health", timeout=2).status_code == 200, timeout=60)
        assert healthy, log_path.read_text()
        yield proc, url, log_path, folder
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_folder_is_listed_and_accepted_under_its_own_name(server):
    _, url, _, folder = server
    models = httpx.get(url + "/v1/models", headers=_bearer(FLAG_KEYS[0]), timeout=10).json()
    assert [card["id"] for card in models["data"]] == [FOLDER]
    assert models["data"][0]["root"] == f"{folder}/"
    body = {"model": FOLDER, "prompt": "w5 w7", "max_tokens": 3, "ignore_eos": True}
    answer = httpx.post(url + "/v1/completions", json=body, headers=_bearer(FLAG_KEYS[1]), timeout=30)
    assert answer.status_code == 200 and answer.json()["model"] == FOLDER
    wrong = httpx.post(
        url + "/v1/completions", json={**body, "model": str(folder)}, headers=_bearer(FLAG_KEYS[1])
    )
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"
    health = httpx.get(url + "/health", timeout=10).json()
    assert health["model"] == FOLDER and health["model_source"].rstrip("/") == str(folder)


def test_the_flags_replace_the_environment_variable(server):
    _, url, _, _ = server
    assert httpx.get(url + "/v1/models", headers=_bearer(ENV_KEY), timeout=10).status_code == 401
    assert httpx.get(url + "/v1/models", timeout=10).status_code == 401
    assert all(
        httpx.get(url + "/v1/models", headers=_bearer(key), timeout=10).status_code == 200
        for key in FLAG_KEYS
    )
    assert httpx.get(url + "/metrics", timeout=10).status_code == 200  # open without the flag


def test_no_key_reaches_the_log_and_the_server_exits_0(server):
    proc, url, log_path, _ = server
    httpx.get(url + "/v1/models", headers=_bearer("a-guess-that-is-wrong"), timeout=10)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log = log_path.read_text()
    assert "API key required on every route but /health and /metrics (keys accepted: 2)" in log
    assert '"GET /v1/models HTTP/1.1" 401' in log  # requests are logged: the check below reads them
    for secret in (*FLAG_KEYS, ENV_KEY, "a-guess-that-is-wrong"):
        assert secret not in log


def test_the_default_name_of_a_folder_is_its_last_component(tmp_path):
    folder = tmp_path / "Qwen3-0.6B"
    folder.mkdir()
    assert default_served_model_name(str(folder)) == "Qwen3-0.6B"
    assert default_served_model_name(f"{folder}/") == "Qwen3-0.6B"
    assert default_served_model_name(f"{folder}/../Qwen3-0.6B") == "Qwen3-0.6B"
    assert default_served_model_name("tiny") == "tiny"  # a preset keeps its name
    assert default_served_model_name(str(tmp_path / "absent")) == str(tmp_path / "absent")
