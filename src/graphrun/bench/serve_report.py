"""What the serving benchmark's numbers mean: latency percentiles, throughput, targets, table, JSON, PNG.

Kept apart from the measurement (serve.py) so the payload's schema is read in one place. Latencies come
from the client's clock (serve_client.py): TTFT is send -> first token ids; inter-token latency (ITL) is
per token, a chunk of k tokens after a gap g giving k samples of g/k (the first chunk's tokens are in
TTFT, not ITL), so a server that batches tokens into fewer chunks is neither rewarded nor punished.
Throughput is output tokens received over the timed run's wall time. Targets are goals printed next to
their measurements, never claims; on the CPU (tiny preset, sim backend) no timing target can be met.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from graphrun.bench.report import (
    can_plot,
    device_slug,
    environment,
    goal,
    headline,
    print_goals,
    print_table,
    table_value,
    write_json,
)
from graphrun.bench.serve_client import RequestResult
from graphrun.stats import PERCENTILES, latency_ms

MIN_GRAPH_OVER_EAGER = 3.0  # throughput, at the concurrency and request count below
GOAL_CONCURRENCY, GOAL_NUM_REQUESTS = 16, 200
MAX_ITL_P99_OVER_P50 = 1.5  # graph mode
MAX_ERRORS_LISTED = 5
MIB = 2**20
CPU_NOTE = "cpu: tiny preset, graph mode on the sim backend; these timings mean nothing (a smoke test)"
TABLE = {  # header -> run key, or "key.stat" for one statistic of a latency summary
    "mode": "mode",
    "status": "status",
    "startup_s": "startup_s",
    "tok/s": "tokens_per_s",
    "req/s": "requests_per_s",
    "ttft_p50_ms": "ttft_ms.p50",
    "ttft_p99_ms": "ttft_ms.p99",
    "itl_p50_ms": "itl_ms.p50",
    "itl_p99_ms": "itl_ms.p99",
    "itl_p99/p50": "itl_p99_over_p50",
    "failed": "num_failed",
    "exit": "exit_code",
    "gpu_MiB": "gpu_reserved_mib",
    "rss_MiB": "max_rss_mib",
}


def _chunk_gaps(times: Sequence[float], sizes: Sequence[int]) -> Iterator[tuple[float, float, int]]:
    """(previous chunk's time, this chunk's time, its token count) for every chunk after the first."""
    for i in range(1, len(times)):
        yield times[i - 1], times[i], sizes[i]


def itl_samples(chunk_times: Sequence[float], chunk_sizes: Sequence[int]) -> list[float]:
    """Per-token gaps: a chunk of k tokens arriving g seconds after the previous chunk gives k x g/k."""
    return [(end - start) / k for start, end, k in _chunk_gaps(chunk_times, chunk_sizes) for _ in range(k)]


def itl_by_churn(results: Sequence[RequestResult]) -> dict[str, dict[str, Any]]:
    """ITL split by whether another request was sent or ended during the gap ("churn") or not ("steady").

    The server parses, admits and finishes requests on the same event loop that writes every stream's
    tokens, and the engine admits them between steps; this split shows how much of the tail they cause.
    """
    ok = [r for r in results if r.ok and r.latency_s is not None]
    events = sorted([r.sent_at for r in results] + [r.sent_at + (r.latency_s or 0.0) for r in ok])
    split: dict[str, list[float]] = {"churn": [], "steady": []}
    for r in ok:
        for start, end, k in _chunk_gaps(r.chunk_times, r.chunk_sizes):
            lo, hi = r.sent_at + start, r.sent_at + end
            busy = bisect.bisect_right(events, lo) < bisect.bisect_left(events, hi)  # one strictly inside
            split["churn" if busy else "steady"] += [(hi - lo) / k] * k
    return {name: {"n": len(samples), **latency_ms(samples)} for name, samples in split.items()}


def _request_row(r: RequestResult) -> dict[str, Any]:
    return {
        "index": r.index,
        "prompt_tokens": r.num_prompt_tokens,
        "max_tokens": r.max_tokens,
        "output_tokens": r.num_usage_tokens,
        "token_ids": r.num_token_ids,
        "chunks": len(r.chunk_sizes),
        "ttft_ms": None if r.ttft_s is None else r.ttft_s * 1e3,
        "latency_ms": None if r.latency_s is None else r.latency_s * 1e3,
        "ok": r.ok,
        "lost": r.lost,
        "error": r.error,
        "ids_digest": r.ids_digest,
    }


def summarize_run(results: Sequence[RequestResult], wall_s: float) -> dict[str, Any]:
    """Counts, throughput and latency percentiles of one timed run (latencies of ok requests only)."""
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    itl = [s for r in ok for s in itl_samples(r.chunk_times, r.chunk_sizes)]
    itl_summary = latency_ms(itl)
    p50, p99 = itl_summary["p50"], itl_summary["p99"]
    num_tokens = sum(r.num_token_ids for r in results)
    return {
        "wall_s": wall_s,
        "num_requests": len(results),
        "num_ok": len(ok),
        "num_failed": len(failed),  # lost ones included
        "num_lost": sum(r.lost for r in results),
        "errors": [f"request {r.index}: {r.error}" for r in failed[:MAX_ERRORS_LISTED]],
        "output_tokens": num_tokens,
        "tokens_per_s": num_tokens / wall_s if wall_s > 0 else None,
        "requests_per_s": len(ok) / wall_s if wall_s > 0 else None,
        "ttft_ms": latency_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        "itl_ms": itl_summary,
        "itl_p99_over_p50": p99 / p50 if p50 and p99 is not None else None,
        "itl_by_churn_ms": itl_by_churn(results),
        "latency_ms": latency_ms([r.latency_s for r in ok if r.latency_s is not None]),
        "num_chunks": sum(len(r.chunk_sizes) for r in results),
        "num_multi_token_chunks": sum(k > 1 for r in results for k in r.chunk_sizes),
        "requests": [_request_row(r) for r in results],
    }


def run_ok(run: Mapping[str, Any]) -> bool:
    """A mode ran cleanly: started, every request (warm-up too) ok, and the server exited 0 on SIGTERM."""
    return (
        run.get("error") is None
        and run.get("num_failed") == 0
        and run.get("num_warmup_failed") == 0
        and run.get("exit_code") == 0
    )


def serve_goals(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for what this run measured, each with `met` (timing targets: never on the CPU)."""
    timed = bool(payload["timings_meaningful"])
    runs = {run["mode"]: run for run in payload["runs"]}
    graph = runs.get("graph", {})
    settings = payload["settings"]
    at_goal_load = (
        settings["concurrency"] == GOAL_CONCURRENCY and settings["num_requests"] >= GOAL_NUM_REQUESTS
    )
    what = f"graph / eager throughput, concurrency {settings['concurrency']}, {settings['num_requests']} req"
    ratio = payload["graph_over_eager_throughput"]
    started = [run for run in payload["runs"] if run.get("error") is None]
    failed = sum(run.get("num_failed", 0) + run.get("num_warmup_failed", 0) for run in started)
    every_mode_ran = len(started) == len(payload["runs"]) > 0
    return [
        goal(what, ratio, ">=", MIN_GRAPH_OVER_EAGER, "x", timed and at_goal_load),
        goal("graph ITL p99 / p50", graph.get("itl_p99_over_p50"), "<=", MAX_ITL_P99_OVER_P50, "x", timed),
        goal("failed or lost requests, every run", failed, "<=", 0, "", every_mode_ran),
    ]


def serve_payload(settings: Mapping[str, Any], runs: list[dict[str, Any]], cuda: bool) -> dict[str, Any]:
    """The whole result: environment, settings, one entry per mode, the graph/eager ratio, targets."""
    for run in runs:
        run["status"] = _status(run)
    by_mode = {run["mode"]: run for run in runs}
    graph, eager = by_mode.get("graph", {}), by_mode.get("eager", {})
    both = graph.get("tokens_per_s") and eager.get("tokens_per_s")
    payload: dict[str, Any] = {
        "benchmark": "serve",
        **environment(),
        "model": settings["model"],
        "backend": "cuda" if cuda else "sim",
        "timings_meaningful": cuda,
        "note": "" if cuda else CPU_NOTE,
        "timing": (
            "client-side perf_counter per SSE event of streamed /v1/completions (return_token_ids, "
            "ignore_eos, greedy), read with settings.http_client; closed loop over "
            "settings.client_processes processes; "
            "throughput = output tokens / wall s of the timed run"
        ),
        "settings": dict(settings),
        "runs": runs,
        "graph_over_eager_throughput": graph["tokens_per_s"] / eager["tokens_per_s"] if both else None,
        "ok": bool(runs) and all(run_ok(run) for run in runs),
    }
    payload["goals"] = serve_goals(payload)
    return payload


def _status(run: Mapping[str, Any]) -> str:
    if run.get("error") is not None:
        return "start failed" if run.get("startup_s") is None else "error"
    if run.get("num_failed") or run.get("num_warmup_failed"):
        return "failed requests"
    return "ok" if run.get("exit_code") == 0 else "bad exit"


def print_serve(payload: Mapping[str, Any]) -> None:
    """Headline, table, ratio, problems, targets, then one JSON line (without the per-request rows)."""
    print(f"serve ({payload['model']}, {payload['backend']}) on {headline(payload)}")
    if payload["note"]:
        print(payload["note"])
    runs = payload["runs"]
    print_table([{head: table_value(run, key) for head, key in TABLE.items()} for run in runs], list(TABLE))
    ratio = payload["graph_over_eager_throughput"]
    print(f"graph / eager throughput: {ratio:.2f}x" if ratio else "graph / eager throughput: -")
    for line in _problems(runs):
        print(line)
    print_goals(payload["goals"])
    print(json.dumps(_without_requests(payload), default=str))


def _problems(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    for run in runs:
        mode = run["mode"]
        if run.get("error") is not None:
            out.append(f"PROBLEM {mode}: {run['error']} (log: {run['log']})")
            out += [f"  | {line}" for line in run.get("log_tail", "").splitlines()]
        if run.get("num_failed") or run.get("num_warmup_failed"):
            out.append(
                f"PROBLEM {mode}: {run['num_failed']} of {run['num_requests']} requests failed "
                f"({run['num_lost']} lost tokens), {run['num_warmup_failed']} warm-up requests failed"
            )
            out += [f"  {error}" for error in run["errors"] + run.get("warmup_errors", [])]
        if run.get("exit_code") not in (0, None):
            out.append(f"PROBLEM {mode}: the server exited with {run['exit_code']} (log: {run['log']})")
    return out


def _without_requests(payload: Mapping[str, Any]) -> dict[str, Any]:
    runs = [{k: v for k, v in run.items() if k != "requests"} for run in payload["runs"]]
    return {**payload, "runs": runs}


def save_serve(payload: Mapping[str, Any], out: Path) -> tuple[Path, Path | None]:
    """`out`/serve-<device>.json, then .png (throughput per mode; TTFT and ITL percentiles; None
    without matplotlib). The JSON comes first: a failing chart never costs the numbers."""
    stem = out / f"serve-{device_slug(payload['device'])}"
    json_path = write_json(stem.with_suffix(".json"), payload)
    return json_path, _figure(stem.with_suffix(".png"), payload)


def _figure(path: Path, payload: Mapping[str, Any]) -> Path | None:
    """Two panels: output tokens/s per mode; TTFT and ITL p50/p90/p99 per mode (ms, log scale).

    matplotlib is imported here with the Agg canvas and no pyplot, as report.bar_chart does (None
    when it is missing: report.can_plot).
    """
    if not can_plot(path):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = [run for run in payload["runs"] if run.get("tokens_per_s") is not None]
    fig = Figure(figsize=(10.0, 4.5))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    left.bar(
        [run["mode"] for run in runs],
        [run["tokens_per_s"] for run in runs],
        color=[f"C{i}" for i in range(len(runs))],
    )
    left.set_ylabel("output tokens/s")
    stats = [(kind, f"p{q}") for kind in ("ttft_ms", "itl_ms") for q in PERCENTILES]
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        xs = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(stats))]
        heights = [table_value(run, f"{kind}.{stat}") or float("nan") for kind, stat in stats]
        right.bar(xs, heights, width, label=run["mode"])
    right.set_xticks(range(len(stats)), [f"{kind[:-3].upper()} {stat}" for kind, stat in stats])
    right.set_yscale("log")
    right.set_ylabel("ms (log)")
    if runs:
        right.legend()
    title = f"serve {payload['model']}, concurrency {payload['settings']['concurrency']}: {payload['device']}"
    fig.suptitle(title + (f"\n{payload['note']}" if payload["note"] else ""), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
