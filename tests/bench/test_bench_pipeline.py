"""`graphrun bench pipeline` on the CPU: the payload's schema, tiers, derived numbers and targets."""

import json

import pytest

from graphrun.bench.pipeline import time_stats
from graphrun.bench.pipeline_report import act_summary, pipeline_goals
from graphrun.cli import main


def test_small_run_writes_json_and_png(tmp_path, capsys):
    argv = ["bench", "pipeline", "--small", "--iters", "4", "--warmup", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    (json_path,) = tmp_path.glob("pipeline-*.json")
    (png_path,) = tmp_path.glob("pipeline-*.png")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads(json_path.read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == payload
    for key in (
        "device",
        "torch",
        "cuda",
        "date",
        "commit",
        "backend",
        "dtype",
        "policy",
        "goals",
        "summary",
    ):
        assert key in payload
    assert payload["ok"] and payload["outputs_match"] and payload["tiers_as_expected"]
    assert set(payload["act"]) == {"eager", "graph", "prefix_eager"}
    assert set(payload["stages"]) == {"prefix", "expert"}
    for stats in (*payload["act"].values(), *payload["stages"]["expert"].values()):
        assert set(stats) == {"mean_ms", "p50_ms", "p99_ms", "std_ms", "min_ms"} and stats["mean_ms"] > 0
    tiers = {(r["pipeline"], r["stage"]): (r["tier"], r["reason"]) for r in payload["capture"]}
    assert tiers[("prefix_eager", "prefix")] == ("eager", "memory_budget")
    assert tiers[("graph", "prefix")] == ("graph", None) and tiers[("prefix_eager", "expert")][0] == "graph"
    assert set(payload["startup_seconds"]) == {"eager", "graph", "prefix_eager"}
    assert len(payload["goals"]) == 5  # the share kept is None when graphs saved no time (the sim may not)
    assert all(g["value"] is not None for g in payload["goals"] if "share" not in g["name"])
    if payload["backend"] == "sim":  # timings mean nothing there: no target counts as met
        assert "timings not meaningful" in stdout and not any(g["met"] for g in payload["goals"])


def test_bad_steps_is_a_flag_error(tmp_path, capsys):
    assert main(["bench", "pipeline", "--small", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_derived_numbers_and_targets_come_from_the_measurements():
    def stats(mean, p50, p99, std):
        return {"mean_ms": mean, "p50_ms": p50, "p99_ms": p99, "std_ms": std}

    measured = {
        "act": {
            "eager": stats(10.0, 9.0, 20.0, 3.0),
            "graph": stats(2.0, 2.0, 2.4, 0.5),
            "prefix_eager": stats(3.0, 3.0, 3.5, 0.6),
        },
        "startup_seconds": {"eager": 1.0, "graph": 2.5},
    }
    s = act_summary(measured)
    assert s["speedup_mean"] == 5.0 and s["graph_p99_over_p50"] == pytest.approx(1.2)
    assert s["jitter_ratio"] == 6.0 and s["startup_extra_seconds"] == 1.5
    assert s["prefix_eager_share_kept"] == pytest.approx(7 / 8)  # saves 7 of the 8 ms graphs save
    assert all(g["met"] for g in pipeline_goals(s, valid=True))
    assert not any(g["met"] for g in pipeline_goals(s, valid=False))
    measured["act"]["prefix_eager"] = stats(4.0, 4.0, 4.0, 1.0)  # saves 6 of 8: below 0.8
    share = next(g for g in pipeline_goals(act_summary(measured), True) if "share" in g["name"])
    assert share["value"] == pytest.approx(0.75) and not share["met"]


def test_time_stats():
    s = time_stats([0.001, 0.002, 0.003])
    assert s["mean_ms"] == pytest.approx(2.0) and s["p50_ms"] == pytest.approx(2.0)
    assert s["std_ms"] == pytest.approx(1.0) and s["min_ms"] == pytest.approx(1.0)
