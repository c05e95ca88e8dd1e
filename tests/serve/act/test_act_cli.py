"""`graphrun serve --policy example` from the command line, the policy in its own engine process (the
default), on the sim backend: /health with each stage's tier, one /act of the full-size example policy,
SIGTERM drains and exits 0; bad flags are one line on stderr and exit 2."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import numpy as np
from act_models import json_body, observation_arrays
from cli_server import PATIENCE, refused, serve_cli

from graphrun.pipeline.policy.config import ExamplePolicyConfig

HERE = Path(__file__).parent


def _serve(*args: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    return serve_cli(*args, log=log, here=HERE)


def test_serve_policy_example_answers_act_and_drains_on_sigterm(tmp_path):
    log = tmp_path / "log"
    proc, url = _serve("--policy", "example", "--graph-backend", "sim", "--denoising-steps", "4", log=log)
    try:
        health = httpx.get(url + "/health", timeout=10).json()
        assert health["engine_pid"] != proc.pid and health["model"] == "example"
        assert {stage: s["tier"] for stage, s in health["stages"].items()} == {
            "prefix": "graph",
            "expert": "graph",
        }
        assert health["rungs"] == [1, 2, 4, 8]
        config = ExamplePolicyConfig()
        arrays = observation_arrays(1, seed=1, config=config)
        answer = httpx.post(url + "/act", json=json_body(arrays, observation_id="frame-1"), timeout=60)
        assert answer.status_code == 200, answer.text
        actions = np.array(answer.json()["outputs"]["actions"]["data"])
        assert actions.shape == (1, config.horizon, config.action_dim) and np.isfinite(actions).all()
        card = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]
        assert card["id"] == "example" and card["denoising_steps"] == 4
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(PATIENCE) == 0, log.read_text()
    text = log.read_text()
    assert "pipeline example ready: prefix graph" in text and "draining" in text


def _refused(*args: str) -> str:
    return refused(*args, here=HERE)


def test_bad_policy_flags_are_refused_before_anything_starts():
    assert "--policy takes a built-in policy ['example'] or pkg.mod:factory" in _refused("--policy", "nope")
    assert "--denoising-steps must be >= 1" in _refused("--policy", "example", "--denoising-steps", "0")
    assert "drop --model/--module/--exported" in _refused("--policy", "example", "--module", "a:b")
