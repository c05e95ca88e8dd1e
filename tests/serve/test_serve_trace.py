"""The serve step trace: its summary's arithmetic, and a live server writing one when it stops."""

from __future__ import annotations

import json

import httpx
import pytest
from serve_harness import live_server

from graphrun.serve.trace import StepTrace, summarize_trace
from graphrun.step_timing import StepTiming


def _step(start: float, kind: str, seq_ids: list[int], delivered: float | None) -> dict[str, object]:
    return {
        "start": start,
        "launched": start + 0.001,
        "waited": start + 0.003,
        "end": start + 0.004,
        "posted": start + 0.0045,
        "delivered": delivered,
        "kind": kind,
        "rows": len(seq_ids),
        "tokens": len(seq_ids),
        "seq_ids": seq_ids,
    }


def test_summary_splits_steps_and_measures_each_request_gap_from_delivery_to_delivery():
    steps = [
        _step(0.000, "decode", [1, 2], 0.005),
        _step(0.005, "mixed", [1], 0.011),  # seq 1: 6 ms after its last token
        _step(0.011, "decode", [1, 2], 0.020),  # seq 1: 9 ms; seq 2: 15 ms
    ]
    summary = summarize_trace(steps)
    assert summary["num_steps"] == 3
    assert summary["step"]["decode"]["n"] == 2 and summary["step"]["mixed"]["n"] == 1
    assert summary["step"]["decode"]["p50"] == pytest.approx(4.0)
    assert summary["launch"]["p50"] == pytest.approx(1.0)
    assert summary["wait"]["p50"] == pytest.approx(2.0)
    assert summary["between"]["max"] == pytest.approx(2.0)  # 0.005 - 0.004 ... 0.011 - 0.009
    assert summary["delivery"]["max"] == pytest.approx(4.5)
    assert sorted(summary["token_gap"][k] for k in ("p50", "max")) == pytest.approx([9.0, 15.0])
    assert summary["token_gap"]["n"] == 3


def test_records_stop_at_the_bound_without_failing(tmp_path, monkeypatch):
    monkeypatch.setattr("graphrun.serve.trace.MAX_STEPS", 2)
    trace = StepTrace(tmp_path / "t.json")
    timing = StepTiming(0.0, 0.1, 0.2, 0.3, "decode", 1, 1)
    assert [trace.step(timing, 0.4, [7]) for _ in range(3)] == [0, 1, None]
    trace.delivered(1)
    trace.close()
    saved = json.loads((tmp_path / "t.json").read_text())
    assert len(saved["steps"]) == 2 and saved["steps"][1]["delivered"] is not None


@pytest.mark.parametrize("engine_process", [False, True])
def test_a_server_with_a_trace_file_writes_every_step_on_stop(tmp_path, engine_process):
    path = tmp_path / "trace.json"
    with live_server(engine_process=engine_process, trace_path=path) as srv:
        body = {"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 6, "temperature": 0, "ignore_eos": True}
        assert httpx.post(srv.url + "/v1/completions", json=body, timeout=60).status_code == 200
        streamed = {**body, "stream": True, "return_token_ids": True}  # a chunk per batch of tokens
        answer = httpx.post(srv.url + "/v1/completions", json=streamed, timeout=60)
        chunks = [line for line in answer.text.splitlines() if line.startswith("data: {")]
    saved = json.loads(path.read_text())
    delivered = [s for s in saved["steps"] if s["seq_ids"]]
    assert sum(len(s["seq_ids"]) for s in delivered) == 12  # every token of both requests
    assert all(s["delivered"] >= s["posted"] >= s["end"] >= s["start"] for s in delivered)
    assert {s["kind"] for s in saved["steps"]} <= {"prefill", "decode", "mixed", None}
    assert saved["summary"]["token_gap"]["n"] == 10
    sends = json.loads((tmp_path / "trace.sends.json").read_text())  # the HTTP side's writes
    assert len(sends["sends"]) == len(chunks) >= 2  # the streamed request's token chunks
    assert sends["summary"]["send_gap"]["n"] == len(chunks) - 1


def test_the_trace_file_flag_wins_over_the_variable_which_is_its_fallback(tmp_path, monkeypatch):
    from graphrun.cli import build_parser
    from graphrun.serve.cli import _configs

    parser = build_parser()
    monkeypatch.setenv("GRAPHRUN_SERVE_TRACE", str(tmp_path / "env.json"))
    assert _configs(parser.parse_args(["serve"]), "tiny")[1].trace_path == tmp_path / "env.json"
    flagged = parser.parse_args(["serve", "--trace-file", str(tmp_path / "flag.json")])
    assert _configs(flagged, "tiny")[1].trace_path == tmp_path / "flag.json"
    monkeypatch.delenv("GRAPHRUN_SERVE_TRACE")
    assert _configs(parser.parse_args(["serve"]), "tiny")[1].trace_path is None  # off by default
