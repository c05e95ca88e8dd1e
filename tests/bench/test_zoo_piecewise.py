"""The zoo's piecewise section on the sim backend: FULL falls back on both models, PIECEWISE captures."""

import json

from graphrun.bench import zoo_piecewise


def test_piecewise_section_runs_and_reports_the_target(capsys, tmp_path):
    assert zoo_piecewise.main(["--small", "--batch-sizes", "2", "--iters", "4", "--out", str(tmp_path)]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(next(tmp_path.glob("zoo-piecewise-*.json")).read_text())["rows"] == payload["rows"]
    rows = {(r["model"], r["mode"]): r for r in payload["rows"]}
    assert rows[("mlp_without_op", "full")]["captured"]
    for model in ("mlp_one_uncapturable_op", "hf_bert"):
        assert not rows[(model, "full")]["captured"] and rows[(model, "full")]["eager_calls"] > 0
        assert rows[(model, "piecewise")]["captured"] and rows[(model, "piecewise")]["eager_calls"] == 0
    assert rows[("mlp_one_uncapturable_op", "piecewise")]["splits"] >= 1
    assert [t["name"] for t in payload["targets"]] == ["piecewise/full speedup, batch 2"]
