"""The serving benchmark on the CPU: workload draws, latency helpers, SSE parsing, goals, and real runs."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest

from graphrun.bench.serve import ServeBenchSetup
from graphrun.bench.serve_client import RequestResult, SSEDecoder, parse_sse
from graphrun.bench.serve_process import cpu_seconds
from graphrun.bench.serve_report import itl_by_churn, itl_samples, serve_goals, summarize_run
from graphrun.bench.serve_workload import Workload, lognormal_lengths, plan_requests
from graphrun.cli import build_parser, main
from graphrun.errors import ConfigError
from graphrun.stats import latency_ms, percentile

TINY_RUN = ["--model", "tiny", "--num-requests", "10", "--concurrency", "4", "--warmup-requests", "2",
            "--prompt-len-median", "16", "--prompt-len-max", "64", "--output-len-median", "8",
            "--output-len-max", "32", "--max-num-seqs", "4", "--startup-timeout", "120",
            "--request-timeout", "60", "--server-arg=--max-model-len=256"]  # fmt: skip
# a short context keeps the simulated capture quick (its static buffers scale with max_model_len)


# ----- workload --------------------------------------------------------------------------------------


def test_lengths_are_seeded_long_tailed_and_clipped():
    draw = lognormal_lengths(4000, 128, 0.8, 4, 512, seed="0:timed:output")
    assert draw == lognormal_lengths(4000, 128, 0.8, 4, 512, seed="0:timed:output")
    assert draw != lognormal_lengths(4000, 128, 0.8, 4, 512, seed="1:timed:output")
    assert min(draw) >= 4 and max(draw) <= 512
    assert max(draw) == 512 and min(draw) < 20  # both tails reach the clip region
    assert 115 <= statistics.median(draw) <= 141  # the median is where it was asked to be
    assert statistics.fmean(draw) > statistics.median(draw)  # long right tail


def test_plans_are_deterministic_fit_the_context_and_keep_warmup_apart():
    workload = Workload(
        num_requests=50, prompt_len_median=40, prompt_len_max=100, output_len_median=20, output_len_max=60
    )
    timed = plan_requests(workload, 50, vocab_size=512, max_model_len=80, label="timed")
    assert timed == plan_requests(workload, 50, vocab_size=512, max_model_len=80, label="timed")
    assert timed != plan_requests(workload, 50, vocab_size=512, max_model_len=80, label="warmup")
    assert [s.index for s in timed] == list(range(50))
    for spec in timed:
        assert len(spec.prompt_ids) + spec.max_tokens <= 80
        assert all(0 <= i < 512 for i in spec.prompt_ids)
        assert 4 <= spec.max_tokens <= 512
    assert any(s.clipped for s in timed)  # a 100-token prompt cannot fit next to its output in 80
    roomy = plan_requests(workload, 50, vocab_size=512, max_model_len=4096, label="timed")
    assert not any(s.clipped for s in roomy)
    assert [s.max_tokens for s in roomy] == [s.max_tokens for s in timed]  # outputs are kept


def test_a_shared_prefix_starts_every_prompt_warm_up_included():
    workload = Workload(prompt_len_median=20, prompt_len_max=40, output_len_median=8, output_len_max=16,
                        shared_prefix_len=32)  # fmt: skip
    timed = plan_requests(workload, 20, vocab_size=512, max_model_len=4096, label="timed")
    warmup = plan_requests(workload, 4, vocab_size=512, max_model_len=4096, label="warmup")
    prefix = timed[0].prompt_ids[:32]
    assert all(s.prompt_ids[:32] == prefix for s in timed + warmup)
    assert all(len(s.prompt_ids) > 32 and not s.clipped for s in timed)
    assert len({tuple(s.prompt_ids[32:]) for s in timed}) == len(timed)  # the rest is each request's own
    tight = plan_requests(workload, 20, vocab_size=512, max_model_len=40, label="timed")
    assert all(len(s.prompt_ids) + s.max_tokens <= 40 for s in tight) and any(s.clipped for s in tight)
    with pytest.raises(ConfigError, match="--shared-prefix-len"):
        Workload(shared_prefix_len=-1)


def test_workload_and_setup_reject_bad_flags():
    with pytest.raises(ConfigError, match="--output-len-median"):
        Workload(output_len_median=600, output_len_max=512)
    args = build_parser().parse_args(["bench", "serve", "--modes", "graph,fast"])
    with pytest.raises(ConfigError, match="--modes"):
        ServeBenchSetup.from_args(args)


def test_server_command_per_mode():
    args = build_parser().parse_args(
        ["bench", "serve", "--model", "tiny", "--max-num-seqs", "8", "--server-arg=--max-model-len 512"]
    )
    setup = ServeBenchSetup.from_args(args)
    eager, graph = setup.server_argv("eager", 8123), setup.server_argv("graph", 8123)
    assert eager[:5] == ["-m", "graphrun", "--log-level", "INFO", "serve"]
    assert "--enforce-eager" in eager and "--enforce-eager" not in graph
    assert eager[-4:] == ["--max-num-seqs", "8", "--max-model-len", "512"]
    assert ("--graph-backend" in graph) == (not setup.cuda)  # the simulator stands in for CUDA graphs


# ----- latency statistics ----------------------------------------------------------------------------


def test_percentiles_interpolate_between_ranks():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0 and percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([float(i) for i in range(1, 101)], 99) == pytest.approx(99.01)
    assert percentile([], 50) is None
    summary = latency_ms([0.010, 0.020, 0.030])
    assert summary["p50"] == pytest.approx(20.0) and summary["mean"] == pytest.approx(20.0)
    assert latency_ms([]) == {"p50": None, "p90": None, "p99": None, "mean": None}


def test_a_chunk_of_k_tokens_gives_k_itl_samples_of_its_gap_over_k():
    # first chunk (TTFT) at 1.0 s; 2 tokens 0.2 s later; 3 tokens 0.6 s after that
    samples = itl_samples([1.0, 1.2, 1.8], [1, 2, 3])
    assert samples == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.2])
    assert itl_samples([0.5], [4]) == []  # the first chunk's tokens count in TTFT only


def _result(index: int, times: list[float], sizes: list[int], usage: int, max_tokens: int) -> RequestResult:
    r = RequestResult(index, 10, max_tokens, chunk_times=times, chunk_sizes=sizes, num_usage_tokens=usage)
    r.done, r.latency_s = True, times[-1] + 0.01
    r.check()
    return r


def test_summary_counts_lost_tokens_as_failures_and_keeps_them_out_of_latencies():
    ok = _result(0, [0.1, 0.2, 0.4], [1, 1, 2], usage=4, max_tokens=4)
    lost = _result(1, [0.05, 0.06], [1, 1], usage=3, max_tokens=3)  # usage says 3, the stream carried 2
    cut = RequestResult(2, 10, 5, chunk_times=[0.1], chunk_sizes=[1])
    cut.check()  # no [DONE]
    assert ok.ok and not lost.ok and lost.lost and not cut.ok and not cut.lost
    summary = summarize_run([ok, lost, cut], wall_s=2.0)
    assert (summary["num_ok"], summary["num_failed"], summary["num_lost"]) == (1, 2, 1)
    assert "lost tokens" in summary["errors"][0] and "[DONE]" in summary["errors"][1]
    assert summary["output_tokens"] == 4 + 2 + 1  # every token received counts for throughput
    assert summary["tokens_per_s"] == pytest.approx(3.5) and summary["requests_per_s"] == 0.5
    assert summary["ttft_ms"]["p50"] == pytest.approx(100.0)  # the ok request only
    assert summary["itl_ms"]["p50"] == pytest.approx(100.0)  # samples 0.1, 0.1, 0.1
    assert summary["num_multi_token_chunks"] == 1
    assert [row["ok"] for row in summary["requests"]] == [True, False, False]


def test_itl_gaps_with_another_request_sent_or_ending_inside_count_as_churn():
    long = _result(0, [0.1, 0.2, 0.3, 0.6, 0.7], [1, 1, 1, 1, 2], usage=6, max_tokens=6)  # sent at 0
    short = _result(1, [0.05], [1], usage=1, max_tokens=1)
    short.sent_at = 0.35  # sent inside long's 0.3 -> 0.6 gap; it ends at 0.41, inside the same gap
    split = itl_by_churn([long, short])
    assert split["churn"]["n"] == 1 and split["churn"]["p50"] == pytest.approx(300.0)
    assert split["steady"]["n"] == 4  # 0.1, 0.1, and the last chunk's two tokens at 0.05 each
    assert split["steady"]["p99"] == pytest.approx(100.0)
    assert summarize_run([long, short], wall_s=1.0)["itl_by_churn_ms"] == split


# ----- SSE -------------------------------------------------------------------------------------------


def test_sse_parsing_joins_data_lines_and_skips_comments():
    body = ': keep-alive\n\ndata: {"a": 1}\n\ndata:{"b":\ndata: 2}\nevent: x\n\ndata: [DONE]'
    assert parse_sse(body) == ['{"a": 1}', '{"b":\n2}', "[DONE]"]
    decoder = SSEDecoder()
    assert decoder.feed("data: one") is None
    assert decoder.feed("") == "one"
    assert decoder.feed("") is None  # a blank line with no data is no event


def test_events_without_token_ids_or_with_an_error_fail_the_request():
    r = RequestResult(0, 3, 2)
    r.on_event({"choices": [{"text": "x", "token_ids": [5, 6], "finish_reason": None}]}, 0.1)
    r.on_event({"choices": [{"text": "", "token_ids": [], "finish_reason": "length"}]}, 0.2)
    r.on_event({"choices": [], "usage": {"completion_tokens": 2}}, 0.3)
    assert (r.chunk_times, r.chunk_sizes, r.num_usage_tokens, r.finish_reason) == ([0.1], [2], 2, "length")
    r.done = True
    r.check()
    assert r.ok
    plain = RequestResult(1, 3, 2)
    plain.on_event({"choices": [{"text": "x", "finish_reason": None}]}, 0.1)
    assert not plain.ok and "token_ids" in str(plain.error)
    failed = RequestResult(2, 3, 2)
    failed.on_event({"error": {"message": "engine step failed"}}, 0.1)
    assert failed.error == "error event: engine step failed"


# ----- goals -----------------------------------------------------------------------------------------


def _payload(ratio: float, concurrency: int, timed: bool, failed: int) -> dict:
    clean = {"error": None, "num_failed": 0, "num_warmup_failed": 0}
    runs = [
        {**clean, "mode": "graph", "num_failed": failed, "itl_p99_over_p50": 1.2},
        {**clean, "mode": "eager", "itl_p99_over_p50": 3.0},
    ]
    return {
        "timings_meaningful": timed,
        "runs": runs,
        "settings": {"concurrency": concurrency, "num_requests": 200},
        "graph_over_eager_throughput": ratio,
    }


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux /proc")
def test_cpu_seconds_follow_the_process_cpu_time():
    start, clock = cpu_seconds(os.getpid()), time.process_time()
    while time.process_time() - clock < 0.3:
        pass
    used, expected = cpu_seconds(os.getpid()) - start, time.process_time() - clock
    assert abs(used - expected) < 0.05  # clock ticks are 10 ms
    assert cpu_seconds(2**22 + 1) is None  # above Linux's pid limit: no such process


def test_goals_are_computed_from_the_measurements():
    met = {g["name"]: g["met"] for g in serve_goals(_payload(3.5, 16, timed=True, failed=0))}
    assert list(met.values()) == [True, True, True]
    slow = serve_goals(_payload(2.0, 16, timed=True, failed=1))
    assert [g["met"] for g in slow] == [False, True, False] and slow[2]["value"] == 1
    assert not serve_goals(_payload(3.5, 4, timed=True, failed=0))[0]["met"]  # not at the goal's load
    assert [g["met"] for g in serve_goals(_payload(3.5, 16, timed=False, failed=0))] == [False, False, True]


# ----- real runs -------------------------------------------------------------------------------------


def test_bench_serve_end_to_end_on_the_tiny_preset(tmp_path: Path, capsys):
    assert main(["bench", "serve", *TINY_RUN, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    [json_path] = tmp_path.glob("serve-*.json")
    assert json_path.with_suffix(".png").stat().st_size > 0
    payload = json.loads(json_path.read_text())
    assert {"device", "torch", "date", "commit", "dirty"} <= payload.keys()
    assert payload["ok"] is True and payload["benchmark"] == "serve"
    runs = {run["mode"]: run for run in payload["runs"]}
    assert list(runs) == ["graph", "eager"]
    for run in runs.values():
        assert run["status"] == "ok" and run["error"] is None and run["exit_code"] == 0
        assert run["num_requests"] == run["num_ok"] == 10 and run["num_failed"] == run["num_lost"] == 0
        assert run["num_warmup_failed"] == 0 and run["startup_s"] > 0
        rows = run["requests"]
        assert all(r["output_tokens"] == r["token_ids"] == r["max_tokens"] for r in rows)
        assert run["output_tokens"] == sum(r["max_tokens"] for r in rows)
        assert run["metrics"]["generation_tokens"] == run["output_tokens"]  # the server counted the same
        assert run["ttft_ms"]["p50"] > 0 and run["itl_ms"]["p99"] >= run["itl_ms"]["p50"] > 0
        assert run["memory"]["max_rss_bytes"] > 0 and run["memory"]["kv_cache_bytes"] > 0
        assert Path(run["log"]).read_text()  # the server's log went to a file
        cpu = run["cpu_s"]  # every process's CPU time over the timed run
        # /proc counts whole clock ticks (10 ms): the HTTP process may use less than one on 10 requests
        assert cpu["client"] > 0 and cpu["server"] >= 0 and cpu["engine"] > 0
        machine = run["machine_cpu_s"]  # the whole machine's over the same run: ours are part of it
        assert machine["busy"] + 0.1 >= cpu["client"] + cpu["server"] + cpu["engine"]
        assert machine["steal"] >= 0 and machine["idle"] >= 0
    assert runs["graph"]["metrics"]["graph_replays"] > 0  # decode went through the (simulated) graphs
    assert runs["eager"]["metrics"]["graph_replays"] == 0
    assert runs["eager"]["engine"]["decode_graphs"] is False
    assert payload["graph_over_eager_throughput"] > 0
    assert (
        payload["wakeup_ms"]["mode"] == "sleep"
        and payload["wakeup_ms"]["p99"] >= payload["wakeup_ms"]["p50"] > 0
    )
    goals = {g["name"]: g for g in payload["goals"]}
    assert len(goals) == 3 and goals["failed or lost requests, every run"]["met"] is True
    assert "graph / eager throughput:" in out and "targets (goals to check, not claims):" in out
    last = json.loads(out.strip().splitlines()[-1])
    assert last["ok"] is True and "requests" not in last["runs"][0]


def test_a_server_that_does_not_start_is_recorded_and_fails_the_run(tmp_path: Path, capsys):
    argv = ["bench", "serve", *TINY_RUN, "--modes", "eager", "--server-arg=--max-model-len=1"]
    assert main([*argv, "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    payload = json.loads(next(tmp_path.glob("serve-*.json")).read_text())
    [run] = payload["runs"]
    assert run["status"] == "start failed" and "exited with 2" in run["error"]
    assert "max_model_len" in run["log_tail"]  # the server's own complaint
    assert payload["ok"] is False and payload["goals"][2]["met"] is False
    assert "PROBLEM eager" in out


def test_the_benchmarks_own_servers_do_not_inherit_the_operators_api_key(monkeypatch):
    from graphrun.bench.serve_process import _server_env

    monkeypatch.setenv("GRAPHRUN_API_KEY", "operator-key")
    monkeypatch.setenv("GRAPHRUN_GIT_COMMIT", "abc")
    env = _server_env()
    assert "GRAPHRUN_API_KEY" not in env and env["GRAPHRUN_GIT_COMMIT"] == "abc"


def test_cuda_graph_modes_are_a_mode_axis_and_a_flag_for_mode_graph():
    args = build_parser().parse_args(
        ["bench", "serve", "--modes", "graph,piecewise,full", "--cuda-graph-mode", "FULL-and-piecewise"]
    )
    setup = ServeBenchSetup.from_args(args)
    assert setup.modes == ("graph", "piecewise", "full")
    graph, piecewise = setup.server_argv("graph", 8123), setup.server_argv("piecewise", 8123)
    assert graph[graph.index("--cuda-graph-mode") + 1] == "full_and_piecewise"
    assert piecewise[piecewise.index("--cuda-graph-mode") + 1] == "piecewise"
    assert "--cuda-graph-mode" not in setup.server_argv("eager", 8123)
    assert setup.settings()["cuda_graph_mode"] == "full_and_piecewise"
    plain = ServeBenchSetup.from_args(build_parser().parse_args(["bench", "serve"]))
    assert "--cuda-graph-mode" not in plain.server_argv("graph", 8123)  # the server's default
