"""bench/report.emit: a benchmark's JSON line on stdout and, with a folder, the same result in a file
named by the benchmark and the device."""

import json

from graphrun.bench.report import emit


def test_emit_prints_the_line_and_writes_the_file_named_by_the_device(tmp_path, capsys):
    payload = {"benchmark": "x", "device": "NVIDIA H200", "rows": [1, 2]}
    path = emit(payload, tmp_path / "out", "x-ab")
    assert path == tmp_path / "out" / "x-ab-nvidia-h200.json"
    assert json.loads(path.read_text()) == payload
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == payload


def test_emit_without_a_folder_only_prints(tmp_path, capsys):
    assert emit({"device": "cpu", "ok": True}, None, "x") is None
    assert json.loads(capsys.readouterr().out) == {"device": "cpu", "ok": True}
    assert list(tmp_path.iterdir()) == []
