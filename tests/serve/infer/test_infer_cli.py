"""`graphrun serve --module` from the command line, the model in its own process (the default): arrays
cross the pipe both ways, SIGTERM drains and exits 0; bad flags are one line on stderr and exit 2."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import numpy as np
from cli_server import PATIENCE, refused, serve_cli
from infer_models import scaled

HERE = Path(__file__).parent


def _serve(*args: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    return serve_cli(*args, log=log, here=HERE)


def test_serve_module_in_an_engine_process_answers_and_drains(tmp_path):
    proc, url = _serve("--module", "infer_models:scale_factory", "--batch-wait-ms", "1", log=tmp_path / "log")
    try:
        health = httpx.get(url + "/health", timeout=10).json()
        assert health["engine_pid"] != proc.pid and health["model"] == "scale_factory"
        x, scale = [[1.0, 2.0, 3.0, 4.0]], [3.0]
        body = {
            "inputs": {"x": {"dtype": "float32", "data": x}, "scale": {"dtype": "float32", "data": [scale]}}
        }
        answer = httpx.post(url + "/v1/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"]["scaled"]["data"], scaled(x, scale))
        assert httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"] == "scale_factory"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(PATIENCE) == 0, (tmp_path / "log").read_text()


def _refused(*args: str) -> str:
    return refused(*args, here=HERE)


def test_bad_flags_are_refused_before_anything_starts(tmp_path):
    assert "--model serves an LLM" in _refused("--model", "tiny", "--module", "infer_models:scale_factory")
    assert "no such file" in _refused("--exported", str(tmp_path / "missing.pt2"))
    assert "max_wait_ms must be >= 0" in _refused("--module", "a:b", "--batch-wait-ms", "-1")
    assert "max_batch_requests must be >= 1" in _refused("--module", "a:b", "--max-batch-requests", "0")
    assert "--dim-rungs takes INPUT:AXIS=R1,R2" in _refused("--module", "a:b", "--dim-rungs", "ids=4,8")
    assert "describe an --exported program" in _refused("--module", "a:b", "--dim-rungs", "ids:1=4,8")
