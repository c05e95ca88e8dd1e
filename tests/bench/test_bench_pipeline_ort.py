"""`graphrun bench pipeline --backend ort` on the CPU: both stages exported and run on OrtRunner (IOBinding
without graphs here), the same payload, written apart from the torch run's."""

import json

import pytest

pytest.importorskip("onnxruntime", reason="graphrun[onnx] is not installed")
pytest.importorskip("onnxscript", reason="graphrun[onnx] is not installed")

from graphrun.cli import main


def test_small_ort_run_writes_its_own_json(tmp_path, capsys):
    argv = ["bench", "pipeline", "--small", "--backend", "ort", "--iters", "3", "--warmup", "1"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    (json_path,) = tmp_path.glob("pipeline-ort-*.json")
    payload = json.loads(json_path.read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == payload
    assert payload["runtime"] == "ort" and payload["ok"] and payload["outputs_match"]
    tiers = {(r["pipeline"], r["stage"]): (r["tier"], r["reason"]) for r in payload["capture"]}
    assert tiers[("graph", "prefix")] == ("graph", None) and tiers[("graph", "expert")] == ("graph", None)
    assert tiers[("prefix_eager", "prefix")] == ("eager", "mode_none")  # switched off: no real failure
    assert tiers[("eager", "expert")] == ("eager", "mode_none")
    assert set(payload["act"]) == {"eager", "graph", "prefix_eager"}
    assert "pipeline on onnxruntime (sim, float32)" in stdout
