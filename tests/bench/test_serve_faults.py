"""`bench serve --faults`: the drill settings, how in-flight requests ended, and both drills run for real
on the tiny preset (the sim backend's graphs, an engine process SIGKILLed under load)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bench_serve import TINY_RUN

from graphrun.bench.serve_client import RequestResult
from graphrun.bench.serve_faults import ServeFaults, compare_outputs, faults_goals, kill_outcomes
from graphrun.cli import main
from graphrun.errors import ConfigError


def test_faults_parse_and_refuse_bad_values():
    assert ServeFaults.parse("replay=0.01") == ServeFaults(0.01, None)
    assert ServeFaults.parse("kill=0.5, replay=0.2") == ServeFaults(0.2, 0.5)
    for bad in ("replay", "replay=x", "crash=0.1", "replay=2", "kill=1", "kill=0"):
        with pytest.raises(ConfigError):
            ServeFaults.parse(bad)


def _result(index: int, sent: float, latency: float | None, error: str | None = None, status: int = 200):
    r = RequestResult(index, 4, 8, sent_at=sent, latency_s=latency, status=status)
    if error is not None:
        r.fail(error)
    return r


def test_requests_in_flight_at_the_kill_are_classified():
    results = [
        _result(0, 0.0, 1.0),  # done before the kill at t=5: not in flight
        _result(1, 4.0, 2.0, "error event: the engine exited"),
        _result(2, 4.5, 1.0, "HTTP 503", status=503),
        _result(3, 4.9, 60.0, "timed out after 60 s"),  # ran into the client's timeout
        _result(4, 4.9, 3.0, "the stream ended without [DONE]"),
        _result(5, 4.0, 2.0),  # finished as if nothing happened
        _result(6, 6.0, 0.01, "HTTP 503", status=503),  # sent after the kill
    ]
    out = kill_outcomes(results, kill_time=5.0, timeout_s=60.0)
    assert out == {
        "in_flight": 5, "error_event": 1, "http_5xx": 1, "hung": 1, "cut": 1, "complete": 1, "other": 0,
        "answered_with_error": 2,
    }  # fmt: skip


def test_outputs_compare_by_digest_and_goals_follow():
    clean = [{"index": i, "ok": True, "ids_digest": i} for i in range(4)]
    drilled = [{"index": 0, "ok": True, "ids_digest": 0}, {"index": 1, "ok": True, "ids_digest": 9},
               {"index": 2, "ok": False, "ids_digest": 2}]  # fmt: skip
    assert compare_outputs(clean, drilled) == {"compared": 2, "same": 1}
    drills = {
        "replay": [
            {
                "mode": "graph",
                "num_failed": 0,
                "replay_error_fallbacks": 3,
                "outputs": {"compared": 2, "same": 1},
            }
        ],
        "kill": [{"mode": "graph", "exit_code": 1, "outcomes": {"in_flight": 3, "answered_with_error": 3}}],
    }
    met = {g["name"]: g["met"] for g in faults_goals(drills)}
    assert met == {
        "graph replay faults: failed requests": True,
        "graph replay faults: replay_error fallbacks": True,
        "graph replay faults: requests with other ids than clean, beyond a control's": False,
        "graph engine kill: in-flight requests not ended by an error": True,
        "graph engine kill: server exit status": True,
    }


def test_both_drills_on_the_tiny_preset(tmp_path: Path):
    run = [a for a in TINY_RUN if a != "10"]  # more requests, so the kill lands mid-load
    run[run.index("--num-requests") + 1 : run.index("--num-requests") + 1] = ["24"]
    argv = [
        "bench",
        "serve",
        *run,
        "--modes",
        "graph",
        "--faults",
        "replay=0.3,kill=0.5",
        "--out",
        str(tmp_path),
    ]
    argv += ["--server-arg=--engine-process"]
    code = main(argv)
    payload = json.loads(next(tmp_path.glob("serve-*.json")).read_text())
    assert payload["settings"]["faults"] == {"replay": 0.3, "kill_at": 0.5}
    [replay] = payload["faults"]["replay"]
    assert replay["num_failed"] == 0 and replay["replay_error_fallbacks"] > 0
    assert replay["outputs"]["compared"] == 24 and replay["outputs"]["same"] == 24  # float32: exact
    assert replay["control_outputs"] == replay["outputs"]
    [kill] = payload["faults"]["kill"]
    outcomes = kill["outcomes"]
    assert outcomes["in_flight"] > 0 and outcomes["answered_with_error"] == outcomes["in_flight"], outcomes
    assert kill["exit_code"] not in (0, None)
    goals = [g for g in payload["goals"] if "faults" in g["name"] or "kill" in g["name"]]
    assert len(goals) == 5 and all(g["met"] for g in goals), goals
    assert code == 0 and payload["ok"] is True
