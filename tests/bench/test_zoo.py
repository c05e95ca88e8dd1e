"""The zoo benchmark on the CPU: small models, runner vs eager on the sim backend, and one tiny full run."""

import io
import json

import pytest
import torch

from graphrun import GraphRunner
from graphrun.bench.models import MODEL_NAMES, build
from graphrun.bench.report import device_slug, goal, print_table
from graphrun.bench.timing import summarize, time_calls, time_interleaved
from graphrun.bench.zoo import ladder_sizes, run_zoo
from graphrun.cli import build_parser

SMALL_SHAPES = {
    "mlp": ((3, 64), (3, 64)),
    "encoder": ((3, 16, 64), (3, 16, 64)),
    "convnet": ((3, 3, 32, 32), (3, 10)),
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_small_models_have_the_documented_shapes(name):
    model, make_input = build(name, small=True, dtype=torch.float32, device="cpu")
    x = make_input(3)
    with torch.inference_mode():
        y = model(x)
    want_in, want_out = SMALL_SHAPES[name]
    assert tuple(x.shape) == want_in and tuple(y.shape) == want_out
    assert x.abs().sum() > 0 and y.abs().sum() > 0  # never time or compare on zeros
    assert torch.isfinite(y).all()
    assert not model.training


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, _ = build("mlp", small=True, dtype=torch.float32, device="cpu")
    assert torch.equal(torch.get_rng_state(), before)
    b, _ = build("mlp", small=True, dtype=torch.float32, device="cpu")
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_unknown_model_is_rejected_by_name():
    with pytest.raises(ValueError, match="resnet"):
        build("resnet", small=True, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_runner_matches_eager_on_the_sim_backend(name, registry):
    model, make_input = build(name, small=True, dtype=torch.float32, device="cpu")
    with torch.inference_mode():
        runner = GraphRunner(
            model, (make_input(2),), sizes=[1, 4], backend="sim", name=name, registry=registry
        )
        assert all(s.captured for s in runner.status())
        for batch in (1, 3, 4):  # 3 is padded up to rung 4
            x = make_input(batch)
            torch.testing.assert_close(runner(x), model(x))
        args, kwargs = runner.static_inputs(4)
        x = make_input(4)
        args[0].copy_(x)
        torch.testing.assert_close(runner(*args, **kwargs), model(x))
    assert runner.stats.num_replayed == 4
    assert not runner.stats.eager_fallback


def test_summarize_known_lists():
    s = summarize([0.004, 0.001, 0.003, 0.002])
    assert s == pytest.approx({"median_ms": 2.5, "p99_ms": 4.0, "mean_ms": 2.5})
    s = summarize([i / 1000 for i in range(1, 101)])
    assert s["p99_ms"] == pytest.approx(99.0) and s["median_ms"] == pytest.approx(50.5)
    with pytest.raises(ValueError):
        summarize([])


def test_time_calls_and_interleaving_count_every_call():
    calls = {"a": 0, "b": 0}
    syncs = []

    def bump(name):
        def fn():
            calls[name] += 1

        return fn

    times = time_calls(bump("a"), iters=7, warmup=3, sync=lambda: syncs.append(1))
    assert len(times) == 7 and calls["a"] == 10 and len(syncs) == 14 and min(times) >= 0
    calls.update(a=0)
    per_name = time_interleaved(
        {"a": bump("a"), "b": bump("b")}, iters=23, warmup=2, sync=lambda: None, rounds=10
    )
    assert {k: len(v) for k, v in per_name.items()} == {"a": 23, "b": 23}
    assert calls == {"a": 25, "b": 25}


def test_report_helpers():
    out = io.StringIO()
    print_table([{"name": "x", "ms": 1.23456}, {"name": "longer", "ms": None}], ["name", "ms"], file=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1  # aligned
    assert "1.235" in lines[2] and lines[3].endswith("-")
    assert goal("t", 19.0, "<=", 20, " us")["met"] is True
    assert goal("t", 21.0, "<=", 20, " us")["met"] is False
    assert goal("t", None, ">=", 0.9, "x")["met"] is False
    assert goal("t", 1.0, ">=", 0.9, "x", valid=False)["met"] is False
    assert device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_ladder_sizes_is_the_nine_rung_ladder():
    assert ladder_sizes(64) == (1, 2, 4, 8, 16, 24, 32, 48, 64)
    assert ladder_sizes(10) == (1, 2, 4, 8, 10)
    with pytest.raises(ValueError, match="ladder-max"):
        ladder_sizes(0)


def test_run_zoo_small_writes_json_and_png(tmp_path, capsys):
    argv = ["bench", "zoo", "--small", "--models", "encoder", "--batch-sizes", "1", "--iters", "4"]
    argv += ["--warmup", "1", "--ladder-max", "4", "--out", str(tmp_path)]
    assert run_zoo(build_parser().parse_args(argv)) == 0
    stdout = capsys.readouterr().out
    (json_path,) = tmp_path.glob("zoo-*.json")
    (png_path,) = tmp_path.glob("zoo-*.png")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads(json_path.read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == payload  # the last stdout line is the whole payload
    for key in ("device", "torch", "cuda", "date", "commit", "dirty", "backend", "dtype", "ok", "goals"):
        assert key in payload
    assert payload["ok"] is True
    (row,) = payload["results"]
    assert (row["model"], row["batch"]) == ("encoder", 1)
    assert row["runner_captured"] and row["outputs_match"] and row["max_abs_diff"]["zero_copy"] == 0
    for mode in ("eager", "raw_copy_replay", "raw_replay", "runner", "runner_zero_copy"):
        assert set(row[mode]) == {"median_ms", "p99_ms", "mean_ms"} and row[mode]["median_ms"] > 0
    assert row["speedup_ratio"] == pytest.approx(row["speedup_runner"] / row["speedup_raw"])
    assert row["runner_replayed"] >= payload["iters"] and row["runner_eager_calls"] == 0
    assert payload["ladder"]["sizes"] == [1, 2, 4] and payload["ladder"]["all_captured"] is True
    assert {g["name"].split()[0] for g in payload["goals"]} == {"encoder"}
    assert all(isinstance(g["met"], bool) for g in payload["goals"]) and len(payload["goals"]) == 3
    if payload["backend"] == "sim":
        assert "cpu: sim backend, timings not meaningful" in stdout
        assert payload["timings_meaningful"] is False and payload["dtype"] == "float32"
