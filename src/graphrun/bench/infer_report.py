"""What `bench infer`'s numbers mean: per-point throughput and latency, the targets, table, JSON and PNG.

A run is one server (graph or eager, batching on or off); a point is one concurrency on it. Throughput
is requests answered and checked per wall second of the timed run; latency is the client's, send to
checked answer. "Batching off" is a server with `--max-batch-requests 1`: one request per model call, the
one-request-at-a-time baseline of issue 16's target (batching on at 32 concurrent clients: >= 4x its
throughput, and p99 <= 2x p50). Targets are goals printed next to their measurements, never claims; on
the CPU (graph mode on the sim backend) no timing target can be met.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from graphrun.bench.infer_load import Load
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
from graphrun.stats import latency_ms

GOAL_CONCURRENCY = 32
MIN_BATCHING_SPEEDUP = 4.0  # graph, batching on / off, throughput at GOAL_CONCURRENCY
MAX_P99_OVER_P50 = 2.0  # graph with batching at GOAL_CONCURRENCY
MAX_ERRORS_LISTED = 5
MAX_CLIENT_CPU = 0.9  # a client process busier than this (CPU s per busy s) may be what was measured
CPU_NOTE = "cpu: graph mode on the sim backend; these timings mean nothing (a smoke test)"
TABLE = {  # header -> point key, or "key.stat"
    "server": "server",
    "conc": "concurrency",
    "req/s": "requests_per_s",
    "p50_ms": "latency_ms.p50",
    "p99_ms": "latency_ms.p99",
    "p99/p50": "p99_over_p50",
    "req/call": "requests_per_call",
    "replays": "graph_replays",
    "failed": "num_failed",
    "clients": "client_processes",
    "client_cpu": "client_cpu_max",
}


def run_name(mode: str, batching: bool) -> str:
    """A server's name in tables, logs and files: graph-batching, eager-single, ..."""
    return f"{mode}-{'batching' if batching else 'single'}"


def summarize_point(concurrency: int, rows: int, load: Load, deltas: Mapping[str, float]) -> dict[str, Any]:
    """Counts, throughput, latency percentiles (ok requests) and the server's counters of one point."""
    ok = [o for o in load.outcomes if o.ok]
    failed = [o for o in load.outcomes if not o.ok]
    latency = latency_ms([o.latency_s for o in ok])
    p50, p99 = latency["p50"], latency["p99"]
    calls = deltas.get("graphrun_infer_batch_requests_count", 0.0)
    wall = load.wall_s
    return {
        "concurrency": concurrency,
        "wall_s": wall,
        "num_requests": len(load.outcomes),
        "num_ok": len(ok),
        "num_failed": len(failed),
        "errors": [f"request {o.index}: {o.error}" for o in failed[:MAX_ERRORS_LISTED]],
        "requests_per_s": len(ok) / wall if wall > 0 else None,
        "rows_per_s": rows * len(ok) / wall if wall > 0 else None,
        "latency_ms": latency,
        "p99_over_p50": p99 / p50 if p50 and p99 is not None else None,
        "model_calls": int(calls),
        "requests_per_call": deltas.get("graphrun_infer_batch_requests_sum", 0.0) / calls if calls else None,
        "graph_replays": int(_total(deltas, "graphrun_cuda_graph_replayed")),
        "eager_fallbacks": int(_total(deltas, "graphrun_cuda_graph_eager_fallback")),
        "client_cpu_s": load.client_cpu_s,
        "client_cpu_share": load.client_cpu_s / wall if wall > 0 else None,  # CPUs the client used in all
        **_client_cpu(load),
    }


def _client_cpu(load: Load) -> dict[str, Any]:
    """Per client process, CPU seconds per busy second (near 1: that process was the limit): max, mean."""
    shares = [s for p in load.processes if (s := p.cpu_share) is not None]
    if not load.processes and load.wall_s > 0:  # a load without per-process figures: one process
        shares = [load.client_cpu_s / load.wall_s]
    return {
        "client_processes": max(len(load.processes), 1),
        "client_cpu_by_process": shares,
        "client_cpu_max": max(shares) if shares else None,
        "client_cpu_mean": sum(shares) / len(shares) if shares else None,
    }


def _total(deltas: Mapping[str, float], prefix: str) -> float:
    return sum(value for key, value in deltas.items() if key.startswith(prefix))


def point(payload: Mapping[str, Any], mode: str, batching: bool, concurrency: int) -> Mapping[str, Any]:
    """One run's point at `concurrency` ({} when not measured)."""
    for run in payload["runs"]:
        if run["mode"] == mode and run["batching"] == batching:
            return next((p for p in run.get("points", []) if p["concurrency"] == concurrency), {})
    return {}


def throughput_ratio(a: Mapping[str, Any], b: Mapping[str, Any]) -> float | None:
    """a's requests/s over b's (None when either is missing)."""
    x, y = a.get("requests_per_s"), b.get("requests_per_s")
    return x / y if x and y else None


def ratios(payload: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per concurrency: batching on / off (graph, eager) and graph / eager (batching on, off)."""
    out: dict[str, dict[str, float | None]] = {}
    for c in payload["settings"]["concurrency"]:
        at = {(m, b): point(payload, m, b, c) for m in ("graph", "eager") for b in (True, False)}
        out[str(c)] = {
            "graph_batching_over_single": throughput_ratio(at["graph", True], at["graph", False]),
            "eager_batching_over_single": throughput_ratio(at["eager", True], at["eager", False]),
            "graph_over_eager_batching": throughput_ratio(at["graph", True], at["eager", True]),
            "graph_over_eager_single": throughput_ratio(at["graph", False], at["eager", False]),
        }
    return out


def infer_goals(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 16's targets for what this run measured, each with `met` (timing targets: never on the CPU)."""
    timed = bool(payload["timings_meaningful"])
    c = GOAL_CONCURRENCY
    batching = point(payload, "graph", True, c)
    speedup = throughput_ratio(batching, point(payload, "graph", False, c))
    started = [run for run in payload["runs"] if run.get("error") is None]
    failed = sum(p["num_failed"] + p.get("num_warmup_failed", 0) for r in started for p in r["points"])
    every_run_ran = len(started) == len(payload["runs"]) > 0
    return [
        goal(f"graph, batching on / off throughput, concurrency {c}", speedup, ">=", MIN_BATCHING_SPEEDUP,
             "x", timed),
        goal(f"graph with batching, latency p99 / p50, concurrency {c}", batching.get("p99_over_p50"), "<=",
             MAX_P99_OVER_P50, "x", timed),
        goal("failed requests, every run", failed, "<=", 0, "", every_run_ran),
    ]  # fmt: skip


def run_ok(run: Mapping[str, Any]) -> bool:
    """A server ran cleanly: started, every request (warm-up too) ok, exited 0 on SIGTERM."""
    points = run.get("points", [])
    clean = all(p["num_failed"] == 0 and p.get("num_warmup_failed", 0) == 0 for p in points)
    return run.get("error") is None and bool(points) and clean and run.get("exit_code") == 0


def infer_payload(settings: Mapping[str, Any], runs: list[dict[str, Any]], cuda: bool) -> dict[str, Any]:
    """The whole result: environment, settings, one entry per server, ratios, targets."""
    payload: dict[str, Any] = {
        "benchmark": "infer",
        **environment(),
        "model": settings["model"],
        "backend": "cuda" if cuda else "sim",
        "timings_meaningful": cuda,
        "note": "" if cuda else CPU_NOTE,
        "timing": (
            "client-side perf_counter from send to checked answer of POST /v1/infer (httpx AsyncClient, "
            "closed loop of `concurrency` workers over `client_processes` processes, one shared cursor); "
            "throughput = ok requests / wall s"
        ),
        "settings": dict(settings),
        "runs": runs,
        "ok": bool(runs) and all(run_ok(run) for run in runs),
    }
    payload["ratios"] = ratios(payload)
    payload["goals"] = infer_goals(payload)
    return payload


def table_rows(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for run in payload["runs"]:
        for p in run.get("points", []):
            cells = {**p, "server": run["name"]}
            rows.append({head: table_value(cells, key) for head, key in TABLE.items()})
    return rows


def print_infer(payload: Mapping[str, Any]) -> None:
    """Headline, table, ratios at the top concurrency, problems, targets, then one JSON line."""
    print(f"infer ({payload['model']}, {payload['backend']}) on {headline(payload)}")
    if payload["note"]:
        print(payload["note"])
    print_table(table_rows(payload), list(TABLE))
    top = str(max(payload["settings"]["concurrency"]))
    for name, value in payload["ratios"][top].items():
        print(f"{name} (concurrency {top}): " + (f"{value:.2f}x" if value else "-"))
    for run in payload["runs"]:
        for line in _problems(run):
            print(line)
    print_goals(payload["goals"])
    print(json.dumps(payload, default=str))


def _problems(run: Mapping[str, Any]) -> list[str]:
    name, out = run["name"], []
    if run.get("error") is not None:
        out.append(f"PROBLEM {name}: {run['error']} (log: {run['log']})")
        out += [f"  | {line}" for line in run.get("log_tail", "").splitlines()]
    for p in run.get("points", []):
        if p["num_failed"] or p.get("num_warmup_failed"):
            out.append(
                f"PROBLEM {name} at concurrency {p['concurrency']}: {p['num_failed']} of "
                f"{p['num_requests']} requests failed, {p.get('num_warmup_failed', 0)} warm-up requests"
            )
            out += [f"  {error}" for error in p["errors"] + p.get("warmup_errors", [])]
        if (busiest := p.get("client_cpu_max")) is not None and busiest > MAX_CLIENT_CPU:
            out.append(
                f"PROBLEM {name} at concurrency {p['concurrency']}: a client process used {busiest:.2f} of a "
                f"CPU (> {MAX_CLIENT_CPU}): the client may be what was measured; raise --client-processes"
            )
    if run.get("exit_code") not in (0, None):
        out.append(f"PROBLEM {name}: the server exited with {run['exit_code']} (log: {run['log']})")
    return out


def save_infer(payload: Mapping[str, Any], out: Path) -> tuple[Path, Path | None]:
    """`out`/infer-<device>.json, then .png (None without matplotlib); the JSON first."""
    stem = out / f"infer-{device_slug(payload['device'])}"
    json_path = write_json(stem.with_suffix(".json"), payload)
    return json_path, _figure(stem.with_suffix(".png"), payload)


def _figure(path: Path, payload: Mapping[str, Any]) -> Path | None:
    """Two panels against concurrency, one line per server: requests/s; latency p50 (solid), p99 (dashed)."""
    if not can_plot(path):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.5))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for i, run in enumerate(payload["runs"]):
        points = _measured(run["points"] if run.get("points") else [])
        if not points:
            continue
        xs = [p["concurrency"] for p in points]
        color = f"C{i}"
        left.plot(xs, [p["requests_per_s"] for p in points], "o-", color=color, label=run["name"])
        right.plot(
            xs, [p["latency_ms"]["p50"] for p in points], "o-", color=color, label=f"{run['name']} p50"
        )
        right.plot(
            xs, [p["latency_ms"]["p99"] for p in points], "s--", color=color, label=f"{run['name']} p99"
        )
    ticks = list(payload["settings"]["concurrency"])
    for ax, label in ((left, "requests/s"), (right, "latency, ms (log)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(c) for c in ticks])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        if ax.lines:
            ax.legend(fontsize=7)
    right.set_yscale("log")
    title = f"/v1/infer, {payload['model']}: {payload['device']}"
    fig.suptitle(title + (f"\n{payload['note']}" if payload["note"] else ""), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _measured(points: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [p for p in points if p.get("requests_per_s") and p["latency_ms"].get("p50") is not None]
