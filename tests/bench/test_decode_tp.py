"""`graphrun bench decode --tp` on the CPU: the flag, its refusals, the report's ratios and goals on given
timings, and one real run of TP=1 and TP=2 as spawned gloo ranks (tiny preset, sim graphs) through the
same launcher, rank job and report the GPU run uses (its timings mean nothing here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from graphrun.bench.decode_setup import DecodeSetup
from graphrun.bench.decode_tp_report import print_tp, tp_goals, tp_payload, tp_rows
from graphrun.bench.decode_tp_run import run_decode_tp
from graphrun.cli import build_parser, main
from graphrun.errors import ConfigError
from graphrun.llm.presets import preset_config


def _setup(tmp_path: Path, **kw: Any) -> DecodeSetup:
    values: dict[str, Any] = dict(
        model="tiny",
        batch_sizes=(1, 2),
        context=16,
        new_tokens=64,
        steps=2,
        warmup=0,
        dtype="float32",
        device="cpu",
        peers=False,
        peer_batch_sizes=(),
        out=tmp_path,
        tp_sizes=(1, 2),
    )
    return DecodeSetup(**{**values, **kw})


def _refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run `graphrun bench decode ARGV` here; it must exit 2 with one stderr line, which is returned."""
    assert main(["bench", "decode", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphrun bench decode: error: "), lines
    return lines[0]


def test_tp_flag_takes_a_list_and_defaults_to_one():
    parser = build_parser()
    assert parser.parse_args(["bench", "decode"]).tp == [1]
    assert parser.parse_args(["bench", "decode", "--tp", "1", "2"]).tp == [1, 2]


def test_more_ranks_than_visible_gpus_is_refused_naming_the_count(capsys, tmp_path):
    visible = torch.cuda.device_count()
    size = max(2, visible + 1)
    line = _refusal(capsys, "--tp", "1", str(size), "--out", str(tmp_path))
    assert f"--tp {size} needs {size} GPUs" in line and f"but {visible} " in line and "visible" in line


@pytest.mark.parametrize("sizes", [["1", "1"], ["0"], ["2", "-1"]])
def test_bad_tp_values_are_refused(capsys, tmp_path, sizes):
    line = _refusal(capsys, "--tp", *sizes, "--out", str(tmp_path))
    assert "--tp takes distinct tensor-parallel sizes >= 1" in line and str(sizes).replace("'", "") in line


def test_a_size_the_model_does_not_split_by_is_refused_before_the_gpu_count(capsys, tmp_path):
    assert preset_config("qwen3-0.6b-shape").num_heads % 3  # 16 heads
    line = _refusal(capsys, "--model", "qwen3-0.6b-shape", "--tp", "1", "3", "--out", str(tmp_path))
    assert "--tp 3 does not split 'qwen3-0.6b-shape'" in line and "num_heads" in line


@pytest.mark.parametrize(
    ("option", "flag"),
    [({"peers": True, "peer_batch_sizes": (1,)}, "--peers"), ({"profile": True}, "--profile")],
)
def test_tp_mode_refuses_what_it_does_not_measure(tmp_path, option, flag):
    with pytest.raises(ConfigError, match=flag):
        _setup(tmp_path, device="cuda", **option)
    with pytest.raises(ConfigError, match="FULL decode graph"):
        _setup(tmp_path, cuda_graph_mode="piecewise")
    assert not _setup(tmp_path, tp_sizes=(1,)).tp_mode and _setup(tmp_path, tp_sizes=(2,)).tp_mode


def _measured(tp1: tuple[float, float], tp2: tuple[float, float], allreduce_ms: float) -> dict[int, Any]:
    """Given (graph, eager) medians at batch 1 for TP=1 and TP=2, and TP=2's all-reduce graph median."""

    def row(graph: float, eager: float, allreduce: float | None) -> dict[str, Any]:
        reduced = {"median_ms": allreduce} if allreduce is not None else None
        return {
            "batch": 1,
            "tokens_match": True,
            "graph": {"median_ms": graph},
            "eager": {"median_ms": eager},
            "all_reduce": reduced,
            "all_collectives": {"median_ms": allreduce * 1.5} if allreduce is not None else None,
        }

    return {1: {"rows": [row(*tp1, None)]}, 2: {"rows": [row(*tp2, allreduce_ms)]}}


def test_rows_carry_speedup_shares_and_the_ratio_to_tp1():
    rows = tp_rows(_measured((2.0, 8.0), (1.2, 6.0), 0.3))
    assert [(r["batch"], r["tp"]) for r in rows] == [(1, 1), (1, 2)]
    one, two = rows
    assert one["vs_tp1"] == 1.0 and one["allreduce_share"] == 0.0 and one["allreduce_ms"] is None
    assert two["speedup"] == pytest.approx(5.0) and two["vs_tp1"] == pytest.approx(0.6)
    assert two["allreduce_share"] == pytest.approx(0.25) and two["comm_share"] == pytest.approx(0.375)


def test_goals_met_and_missed_from_the_numbers(tmp_path):
    cuda = _setup(tmp_path, device="cuda", batch_sizes=(1,))
    met = tp_goals(tp_rows(_measured((2.0, 8.0), (1.0, 4.0), 0.2)), cuda)
    assert [g["met"] for g in met] == [True, True]
    assert met[0]["value"] == pytest.approx(0.5) and met[1]["value"] == pytest.approx(4.0)
    missed = tp_goals(tp_rows(_measured((2.0, 8.0), (1.5, 3.0), 0.2)), cuda)
    assert [g["met"] for g in missed] == [False, False]
    assert missed[0]["value"] == pytest.approx(0.75) and missed[1]["value"] == pytest.approx(2.0)
    just = tp_goals(tp_rows(_measured((2.0, 8.0), (1.2, 3.6), 0.2)), cuda)  # both exactly at the target
    assert [g["met"] for g in just] == [True, True]
    cpu = tp_goals(tp_rows(_measured((2.0, 8.0), (1.0, 4.0), 0.2)), _setup(tmp_path, batch_sizes=(1,)))
    assert [g["met"] for g in cpu] == [False, False]  # CPU timings never meet a target
    assert tp_goals([], _setup(tmp_path, batch_sizes=(2,))) == []  # no batch 1: no target applies


def test_a_size_that_failed_leaves_its_goal_unmeasured(tmp_path):
    measured = _measured((2.0, 8.0), (1.0, 4.0), 0.2)
    del measured[2]
    goals = tp_goals(tp_rows(measured), _setup(tmp_path, device="cuda", batch_sizes=(1,)))
    assert [(g["value"], g["met"]) for g in goals] == [(None, False), (None, False)]


def test_tp1_and_tp2_run_as_gloo_ranks_and_report(tmp_path, capsys):
    setup = _setup(tmp_path)
    assert run_decode_tp(setup) == 0
    saved = json.loads((tmp_path / "decode-tp-cpu.json").read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == saved
    assert saved["ok"] and not saved["errors"] and not saved["timings_meaningful"] and saved["note"]
    assert {"device", "torch", "date", "commit", "settings", "goals"} <= set(saved)
    assert saved["settings"]["tp_sizes"] == [1, 2] and saved["settings"]["timed_calls"] == 8
    assert saved["engines"]["2"]["tensor_parallel_size"] == 2 and saved["engines"]["2"]["decode_graphs"]
    rows = {(r["batch"], r["tp"]): r for r in saved["results"]}
    assert set(rows) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    layers, hidden = preset_config("tiny").num_layers, preset_config("tiny").hidden_size
    for (batch, tp), row in rows.items():
        assert row["graph_ms"] > 0 and row["eager_ms"] > 0 and row["context"] == setup.context + 1
        assert row["tokens_match"]
        assert row["speedup"] == pytest.approx(row["eager_ms"] / row["graph_ms"])
        base = rows[batch, 1]["graph_ms"]
        assert row["vs_tp1"] == pytest.approx(row["graph_ms"] / base)
        reduces, gathers = row["collectives"]["all_reduce"], row["collectives"]["all_gather"]
        if tp == 1:  # one rank issues no collective
            assert reduces["count"] == gathers["count"] == 0 and row["allreduce_ms"] is None
            continue
        # the embedding's all-reduce, two per layer, and the logits all-gather: found by running the step
        assert reduces["count"] == 2 * layers + 1 and reduces["shapes"] == [[batch, hidden]]
        assert gathers["count"] == 1
        assert row["allreduce_ms"] > 0 and row["comm_ms"] > 0 and row["allreduce_share"] > 0
        assert len(row["graph_median_ms_by_rank"]) == 2
    assert [g["met"] for g in saved["goals"]] == [False, False]


def test_a_failed_size_is_reported_with_the_sizes_measured_before_it(tmp_path, capsys):
    measured = _measured((2.0, 8.0), (1.0, 4.0), 0.2)
    del measured[2]
    measured[1]["engine"] = {"tensor_parallel_size": 1}
    setup = _setup(tmp_path, device="cuda", batch_sizes=(1,))
    payload = tp_payload(setup, measured, {2: "RuntimeError: rank 1 failed"})
    assert not payload["ok"] and payload["errors"] == {"2": "RuntimeError: rank 1 failed"}
    assert [(r["batch"], r["tp"]) for r in payload["results"]] == [(1, 1)]
    print_tp(payload)
    out = capsys.readouterr().out
    assert "PROBLEM TP=2: RuntimeError: rank 1 failed" in out
    assert "the targets were set for qwen3-8b-shape; this run measured tiny" in out
