"""`graphrun bench infer` on the CPU: the load client's bodies and answer checks (against the server's own
codec), the setup's flags, the point summary and targets, and one real run of every server end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graphrun.bench.client_pool import ProcessLoad
from graphrun.bench.infer import InferBenchSetup
from graphrun.bench.infer_load import (
    Load,
    Outcome,
    ServedCard,
    WireSpec,
    check_answer,
    default_client_processes,
    encode_body,
    plan_bodies,
    random_array,
    run_load,
)
from graphrun.bench.infer_report import _problems, infer_goals, summarize_point
from graphrun.bench.serve_process import ServerProcess, free_port
from graphrun.cli import build_parser, main
from graphrun.errors import ConfigError
from graphrun.serve.infer.codec import Encoding, decode, encode

X = WireSpec("x", "float16", (None, 3))
IDS = WireSpec("ids", "int64", (None, 2))
KEEP = WireSpec("keep", "bool", (None, 5))


# ----- bodies and answers -----------------------------------------------------------------------------


def test_random_inputs_are_seeded_shaped_typed_and_never_all_zero():
    rng = np.random.default_rng(0)
    x, ids, keep = (random_array(spec, 4, rng) for spec in (X, IDS, KEEP))
    assert x.shape == (4, 3) and x.dtype == np.float16 and np.count_nonzero(x) == x.size
    assert ids.dtype == np.int64 and ids.min() >= 1 and ids.max() < 8
    assert keep.dtype == np.bool_ and keep.any()
    flag = WireSpec("b", "bool", (None,))
    assert all(random_array(flag, 1, rng).tolist() == [True] for _ in range(50))  # a lone False: never
    again = random_array(X, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(x, again)
    assert not np.array_equal(x, random_array(X, 4, np.random.default_rng(1)))


@pytest.mark.parametrize("encoding", ["npy", "json"])
def test_bodies_decode_with_the_servers_codec(encoding):
    bodies = plan_bodies([X, IDS], rows=2, num=3, seed=7, encoding=encoding)
    assert bodies == plan_bodies([X, IDS], rows=2, num=3, seed=7, encoding=encoding)
    assert len(set(bodies)) == 3  # each request its own values
    decoded = decode(json.loads(bodies[0]))
    assert decoded.encoding.value == encoding
    assert decoded.tensors["x"].dtype == np.float16 and decoded.tensors["x"].shape == (2, 3)
    assert decoded.tensors["ids"].dtype == np.int64 and decoded.tensors["ids"].shape == (2, 2)
    with pytest.raises(ValueError, match="encoding"):
        encode_body({"x": np.ones(1)}, "pickle")


@pytest.mark.parametrize("encoding", [Encoding.NPY, Encoding.JSON])
def test_answers_are_checked_for_every_output_its_dtype_and_shape(encoding):
    outputs = [WireSpec("y", "float32", (None, 4)), WireSpec("n", "int64", (None,))]
    y, n = np.ones((3, 4), np.float32), np.arange(3)

    def answer(**arrays: np.ndarray) -> dict:
        return json.loads(json.dumps(encode(encoding, arrays)))

    assert check_answer(answer(y=y, n=n), outputs, rows=3) is None
    assert "'n' is missing" in check_answer(answer(y=y), outputs, rows=3)
    assert "dtype float64, expected float32" in check_answer(answer(y=y.astype(np.float64), n=n), outputs, 3)
    assert "shape [3, 4], expected [2, 4]" in check_answer(answer(y=y, n=n), outputs, rows=2)
    assert "expected [3, 4]" in check_answer(answer(y=y[:, :2], n=n), outputs, rows=3)
    assert "no `outputs`" in check_answer({"error": "x"}, outputs, rows=3)


def test_the_card_is_read_from_v1_models():
    spec = {"dtype": "float16", "shape": [None, 8]}
    card_body = {"id": "mlp", "rungs": [1, 2], "inputs": [{"name": "input", **spec}]}
    body = {"data": [{**card_body, "outputs": [{"name": "output", **spec}]}]}
    card = ServedCard.from_models(body)
    assert card.model == "mlp" and card.rungs == (1, 2)
    assert card.inputs == (WireSpec("input", "float16", (None, 8)),)


# ----- setup, summary, targets ------------------------------------------------------------------------


def _setup(*flags: str) -> InferBenchSetup:
    return InferBenchSetup.from_args(build_parser().parse_args(["bench", "infer", *flags]))


def test_the_setup_checks_its_flags_and_builds_each_servers_command():
    setup = _setup("--model", "mlp_small", "--concurrency", "1,8,32")
    assert setup.concurrency == (1, 8, 32) and setup.module == "graphrun.bench.infer_models:mlp_small"
    single = setup.server_argv("eager", batching=False, port=9)
    assert "--enforce-eager" in single and single[single.index("--max-batch-requests") + 1] == "1"
    assert "--max-batch-requests" not in setup.server_argv("graph", batching=True, port=9)
    assert _setup("--model", "pkg.mod:make").module == "pkg.mod:make"
    refused = [
        (["--model", "resnet"], "--model takes"),
        (["--modes", "graph,fast"], "--modes"),
        (["--batching", "on,on"], "--batching"),
        (["--concurrency", "0"], "--concurrency"),
        (["--concurrency", "1,x"], "comma-separated"),
        (["--rows", "0"], "--rows"),
    ]
    for flags, message in refused:
        with pytest.raises(ConfigError, match=message):
            _setup(*flags)


def test_a_point_counts_every_failure_and_reads_requests_per_call():
    outcomes = (Outcome(0, 0.0, 0.010), Outcome(1, 0.0, 0.020), Outcome(2, 0.0, 0.5, "HTTP 429: busy"))
    deltas = {"graphrun_infer_batch_requests_count": 2.0, "graphrun_infer_batch_requests_sum": 3.0,
              'graphrun_cuda_graph_replayed_total{runner=infer}': 2.0}  # fmt: skip
    point = summarize_point(8, rows=2, load=Load(outcomes, wall_s=0.5, client_cpu_s=0.1), deltas=deltas)
    assert point["num_requests"] == 3 and point["num_ok"] == 2 and point["num_failed"] == 1
    assert point["errors"] == ["request 2: HTTP 429: busy"]
    assert point["requests_per_s"] == 4.0 and point["rows_per_s"] == 8.0
    assert point["latency_ms"]["p50"] == pytest.approx(15.0)  # ok requests only
    assert point["requests_per_call"] == 1.5 and point["graph_replays"] == 2


def test_client_cpu_is_kept_per_process_and_a_busy_one_is_a_problem():
    processes = (ProcessLoad(busy_s=0.5, cpu_s=0.25), ProcessLoad(busy_s=0.4, cpu_s=0.38))
    load = Load((Outcome(0, 0.0, 0.01),), wall_s=0.5, client_cpu_s=0.63, processes=processes)
    point = summarize_point(8, rows=1, load=load, deltas={})
    assert point["client_processes"] == 2 and point["client_cpu_s"] == 0.63
    assert point["client_cpu_by_process"] == pytest.approx([0.5, 0.95])
    assert point["client_cpu_max"] == pytest.approx(0.95) and point["client_cpu_mean"] == pytest.approx(0.725)
    run = {"name": "graph-batching", "points": [point], "exit_code": 0}
    assert any("client process used 0.95 of a CPU" in line for line in _problems(run))
    calm = summarize_point(8, rows=1, load=Load(load.outcomes, 0.5, 0.25, processes[:1]), deltas={})
    assert calm["client_cpu_max"] == 0.5 and not _problems({**run, "points": [calm]})


def test_default_client_processes_carry_four_requests_each_and_leave_two_cpus():
    assert default_client_processes(32, cpus=16) == 8
    assert default_client_processes(8, cpus=16) == 2
    assert default_client_processes(1, cpus=16) == 1
    assert default_client_processes(64, cpus=8) == 6
    assert default_client_processes(32, cpus=2) == 1
    assert _setup().processes_for(32) >= 1
    assert _setup("--client-processes", "3").processes_for(2) == 2  # never more than the workers


def _payload(timed: bool, on: float, off: float, p50: float, p99: float) -> dict:
    def run(batching: bool, rps: float) -> dict:
        point = {"concurrency": 32, "requests_per_s": rps, "num_failed": 0,
                 "p99_over_p50": p99 / p50 if batching else None}  # fmt: skip
        return {"mode": "graph", "batching": batching, "error": None, "points": [point]}

    return {"timings_meaningful": timed, "runs": [run(True, on), run(False, off)]}


def test_targets_are_computed_and_never_met_on_the_cpu():
    met = [g["met"] for g in infer_goals(_payload(True, on=500.0, off=100.0, p50=2.0, p99=3.0))]
    assert met == [True, True, True]
    assert [g["met"] for g in infer_goals(_payload(True, 300.0, 100.0, 2.0, 5.0))] == [False, False, True]
    assert [g["met"] for g in infer_goals(_payload(False, 500.0, 100.0, 2.0, 3.0))] == [False, False, True]
    assert infer_goals(_payload(True, 500.0, 100.0, 2.0, 3.0))[0]["value"] == 5.0


# ----- the load over several client processes, against a live server ---------------------------------


def test_two_client_processes_count_every_request_once_and_check_each_answers_content(tmp_path):
    port = free_port()
    argv = ["-m", "graphrun", "serve", "--module", "graphrun.bench.infer_models:mlp_small", "--host",
            "127.0.0.1", "--port", str(port), "--enforce-eager", "--no-engine-process"]  # fmt: skip
    server = ServerProcess(argv, tmp_path / "server.log", f"http://127.0.0.1:{port}")
    try:
        server.wait_healthy(120.0)
        card = ServedCard.from_models(server.get("/v1/models").json())
        bodies, warmup = plan_bodies(card.inputs, 2, 24, 1, "npy"), plan_bodies(card.inputs, 2, 4, 2, "npy")
        load = run_load(server.url, warmup, bodies, card, 2, 4, 60.0, processes=2)
        wrong = tuple(WireSpec(o.name, "int8", o.shape) for o in card.outputs)  # what no answer carries
        refused = run_load(server.url, [], bodies[:6], ServedCard(card.model, card.inputs, wrong, card.rungs),
                           2, 4, 60.0, processes=2)  # fmt: skip
    finally:
        server.stop(30.0)
    assert [o.index for o in load.outcomes] == list(range(24))  # each request once, none lost
    assert all(o.ok for o in load.outcomes), [o.error for o in load.outcomes if not o.ok]
    assert [o.index for o in load.warmup] == [0, 1, 2, 3] and all(o.ok for o in load.warmup)
    assert len(load.processes) == 2 and all(p.cpu_s > 0 and p.busy_s > 0 for p in load.processes)
    assert load.wall_s > 0 and load.client_cpu_s == pytest.approx(sum(p.cpu_s for p in load.processes))
    assert [o.index for o in refused.outcomes] == list(range(6))
    assert all(o.error and "expected int8" in o.error for o in refused.outcomes)  # checked in the children


# ----- end to end --------------------------------------------------------------------------------------


def test_bench_infer_runs_every_server_and_every_request_succeeds(tmp_path, capsys):
    argv = ["bench", "infer", "--model", "mlp_small", "--concurrency", "1,4", "--num-requests", "16",
            "--warmup-requests", "2", "--cuda-graph-max-bs", "4", "--startup-timeout", "120",
            "--server-arg=--no-engine-process", "--client-processes", "2",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    payload = json.loads((tmp_path / "infer-cpu.json").read_text())
    assert (tmp_path / "infer-cpu.png").stat().st_size > 0
    assert payload["benchmark"] == "infer" and payload["ok"] is True
    for key in ("device", "torch", "date", "commit"):
        assert payload[key], key
    assert (
        payload["device"] == "cpu"
        and payload["timings_meaningful"] is False
        and "mean nothing" in payload["note"]
    )
    runs = {run["name"]: run for run in payload["runs"]}
    assert set(runs) == {"graph-batching", "graph-single", "eager-batching", "eager-single"}
    for run in runs.values():
        assert run["exit_code"] == 0 and run["error"] is None
        assert [p["concurrency"] for p in run["points"]] == [1, 4]
        for point in run["points"]:
            assert point["num_requests"] == point["num_ok"] == 16 and point["num_failed"] == 0
            assert point["num_warmup_failed"] == 0 and point["latency_ms"]["p50"] > 0
            assert point["client_processes"] == min(2, point["concurrency"])
            assert len(point["client_cpu_by_process"]) == point["client_processes"]
    single = runs["graph-single"]["points"][1]
    assert single["model_calls"] == 16 and single["requests_per_call"] == 1.0  # one request a call
    assert runs["graph-batching"]["points"][1]["graph_replays"] > 0  # the sim's graphs served it
    assert runs["eager-single"]["points"][1]["graph_replays"] == 0
    assert set(payload["ratios"]) == {"1", "4"}
    assert [g["met"] for g in payload["goals"]] == [False, False, True]
    assert "targets (goals to check, not claims)" in capsys.readouterr().out
