"""Benchmarks keep their numbers: without matplotlib they print and write everything but the chart (and
say so in one line); a run that fails part-way still prints and writes what it measured, with the error."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from test_decode_bench import tiny_setup

from graphrun.bench import decode, zoo
from graphrun.bench.decode import run_decode_bench
from graphrun.cli import build_parser, main

ZOO = ["bench", "zoo", "--small", "--models", "mlp", "--batch-sizes", "1,2", "--iters", "4", "--warmup", "1"]


@pytest.fixture
def no_matplotlib(monkeypatch):
    """`import matplotlib` raises ImportError, as where the `bench` extra is not installed."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def skipped_plot_lines(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if "skipped: matplotlib is not installed" in r.getMessage()
    ]


def last_json_line(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_zoo_without_matplotlib_writes_json_and_table_and_says_the_plot_was_skipped(
    tmp_path: Path, no_matplotlib, capsys, caplog
):
    with caplog.at_level(logging.WARNING):
        assert zoo.run_zoo(build_parser().parse_args([*ZOO, "--out", str(tmp_path)])) == 0
    out = capsys.readouterr().out
    (json_path,) = tmp_path.glob("zoo-*.json")
    assert list(tmp_path.glob("*.png")) == []
    payload = json.loads(json_path.read_text())
    assert payload["ok"] and payload["error"] is None and len(payload["results"]) == 2
    assert last_json_line(out) == payload
    assert "runner_ms" in out  # the table's header
    (line,) = skipped_plot_lines(caplog)
    assert "zoo-" in line and "pip install 'graphrun[bench]'" in line


def test_a_zoo_run_that_fails_part_way_writes_the_rows_it_measured(tmp_path: Path, monkeypatch, capsys):
    measure = zoo._bench_one

    def fail_at_batch_2(name, batch, *args):
        if batch == 2:
            raise RuntimeError("injected: the device fell over")
        return measure(name, batch, *args)

    monkeypatch.setattr(zoo, "_bench_one", fail_at_batch_2)
    assert main([*ZOO, "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    payload = json.loads(next(tmp_path.glob("zoo-*.json")).read_text())
    assert [(r["model"], r["batch"]) for r in payload["results"]] == [("mlp", 1)]
    assert payload["error"] == "RuntimeError: injected: the device fell over"
    assert payload["ok"] is False
    assert "PROBLEM: the run failed after 1 rows" in out
    assert last_json_line(out) == payload


def test_decode_without_matplotlib_writes_json_and_says_the_plot_was_skipped(
    tmp_path: Path, no_matplotlib, capsys, caplog
):
    with caplog.at_level(logging.WARNING):
        payload = run_decode_bench(tiny_setup(tmp_path))
    assert payload["ok"] and payload["error"] is None
    assert json.loads((tmp_path / "decode-cpu.json").read_text()) == last_json_line(capsys.readouterr().out)
    assert not (tmp_path / "decode-cpu.png").exists()
    assert len(skipped_plot_lines(caplog)) == 1


def test_a_decode_run_that_fails_part_way_writes_what_it_measured(tmp_path: Path, monkeypatch, capsys):
    measure = decode.bench_batch

    def fail_at_batch_2(engine, num_seqs, *args):
        if num_seqs == 2:
            raise RuntimeError("injected: out of memory at batch 2")
        return measure(engine, num_seqs, *args)

    monkeypatch.setattr(decode, "bench_batch", fail_at_batch_2)
    payload = run_decode_bench(tiny_setup(tmp_path))
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "decode-cpu.json").read_text())
    assert saved == last_json_line(out)
    assert [r["batch"] for r in saved["results"]] == [1] and saved["results"][0]["tokens_match"]
    assert saved["error"] == "RuntimeError: injected: out of memory at batch 2"
    assert saved["ok"] is False and payload["ok"] is False
    assert saved["engine"]["decode_graphs"] and saved["copy_bandwidth_gbs"] > 0
    assert saved["generate"] is None  # not reached
    assert "PROBLEM: the run failed after 1 batch sizes" in out


def test_serve_bench_without_matplotlib_still_writes_its_json(tmp_path: Path, no_matplotlib, caplog):
    argv = ["bench", "serve", "--model", "tiny", "--modes", "eager", "--warmup-requests", "0"]
    argv += ["--num-requests", "1", "--startup-timeout", "60", "--server-arg=--max-model-len=1"]
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--out", str(tmp_path)]) == 1  # the server refuses its flags: a failed run
    payload = json.loads(next(tmp_path.glob("serve-*.json")).read_text())
    assert payload["runs"][0]["status"] == "start failed"
    assert list(tmp_path.glob("*.png")) == []
    assert len(skipped_plot_lines(caplog)) == 1
