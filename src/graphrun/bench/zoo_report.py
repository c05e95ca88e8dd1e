"""What the zoo's numbers mean: the issue's targets with `met` computed, the table, the chart and the JSON.

Kept apart from the measurement in zoo.py so the payload's schema is read in one place. Targets are printed
as goals next to the measurements, never as claims.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from graphrun.bench.report import (
    bar_chart,
    device_slug,
    environment,
    goal,
    headline,
    print_goals,
    print_table,
    table_value,
    write_json,
)

CPU_NOTE = "cpu: sim backend, timings not meaningful"
MAX_OVERHEAD_US = 20.0  # runner(x) over bare replay, MLP batch 1
MIN_SPEEDUP_RATIO = 0.9  # runner speedup / raw-graph speedup, encoder and convnet at batch 1 and 8
MAX_LADDER_SECONDS = 3.0  # wall time to capture the encoder ladder
MAX_LADDER_POOL_RATIO = 1.3  # ladder pool over the top rung's pool alone
TABLE = {  # header -> row key, or "mode.stat" for one statistic of one timed mode
    "model": "model",
    "batch": "batch",
    "eager_ms": "eager.median_ms",
    "raw_ms": "raw_copy_replay.median_ms",
    "replay_ms": "raw_replay.median_ms",
    "runner_ms": "runner.median_ms",
    "zero_copy_ms": "runner_zero_copy.median_ms",
    "runner_p99_ms": "runner.p99_ms",
    "raw_x": "speedup_raw",
    "runner_x": "speedup_runner",
    "ratio": "speedup_ratio",
    "ovh_us": "overhead_us_vs_replay",
    "ovh_copy_us": "overhead_us_vs_copy_replay",
    "capture_s": "capture_seconds",
    "graph_mib": "graph_mib",
    "max_diff": "max_abs_diff.runner",
}
CHART_SERIES = (("eager", "eager"), ("raw graph (copy+replay)", "raw_copy_replay"), ("GraphRunner", "runner"))


def zoo_goals(rows: list[dict[str, Any]], ladder: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's targets for the rows and ladder this run measured, each with `met`."""
    out = []
    for r in rows:
        where = f"{r['model']} b{r['batch']}"
        if r["model"] == "mlp" and r["batch"] == 1:
            value = r["overhead_us_vs_replay"]
            out.append(goal(f"{where} runner overhead over bare replay", value, "<=", MAX_OVERHEAD_US, " us"))
        if r["model"] in ("encoder", "convnet") and r["batch"] in (1, 8):
            value = r["speedup_ratio"]
            out.append(goal(f"{where} runner speedup / raw speedup", value, ">=", MIN_SPEEDUP_RATIO, "x"))
    if ladder is not None:
        what, ok = f"{ladder['model']} {len(ladder['sizes'])}-rung ladder", ladder["all_captured"]
        seconds, ratio = ladder["capture_seconds"], ladder["pool_ratio"]
        out.append(goal(f"{what} capture wall time", seconds, "<=", MAX_LADDER_SECONDS, " s", ok))
        out.append(goal(f"{what} pool / top rung's", ratio, "<=", MAX_LADDER_POOL_RATIO, "x", ok))
    return out


def zoo_payload(
    rows: list[dict[str, Any]],
    ladder: dict[str, Any] | None,
    backend: str,
    dtype: str,
    small: bool,
    iters: int,
    warmup: int,
    error: str | None = None,
) -> dict[str, Any]:
    """The whole result: environment, settings, per-model rows, the ladder test and the targets.

    error: why the run stopped part-way (None: it finished); the rows are then those measured before.
    """
    meaningful = backend == "cuda"
    return {
        "benchmark": "zoo",
        **environment(),
        "backend": backend,
        "dtype": dtype,
        "small": bool(small),
        "timings_meaningful": meaningful,
        "note": "" if meaningful else CPU_NOTE,
        "timing": "host perf_counter per call, device synced before and after each call, modes interleaved",
        "iters": iters,
        "warmup": warmup,
        "ok": error is None and all(r["outputs_match"] and r["runner_captured"] for r in rows),
        "error": error,
        "results": rows,
        "ladder": ladder,
        "goals": zoo_goals(rows, ladder),
    }


def print_zoo(payload: dict[str, Any]) -> None:
    """Headline, table, problems, ladder line, targets, then the whole payload as one JSON line."""
    print(f"zoo ({payload['backend']}, {payload['dtype']}) on {headline(payload)}")
    if payload["note"]:
        print(payload["note"])
    print_table(
        [{head: table_value(r, key) for head, key in TABLE.items()} for r in payload["results"]], list(TABLE)
    )
    if payload["error"] is not None:
        print(f"PROBLEM: the run failed after {len(payload['results'])} rows: {payload['error']}")
    for r in payload["results"]:
        if not (r["outputs_match"] and r["runner_captured"]):
            print(f"PROBLEM {r['model']} b{r['batch']}: {r['mismatch'] or '; '.join(r['runner_status'])}")
    lad = payload["ladder"]
    if lad is not None:
        ratio = f"{lad['pool_ratio']:.2f}x" if lad["pool_ratio"] is not None else "-"
        print(
            f"ladder {lad['sizes']}: {lad['capture_seconds']:.2f} s, pool {lad['pool_mib']:.1f} MiB; "
            f"top rung {lad['top_rung']} alone {lad['top_pool_mib']:.1f} MiB; ladder/top {ratio}; "
            f"all captured: {lad['all_captured']}"
        )
    print_goals(payload["goals"])
    print(json.dumps(payload, default=str))


def save_zoo(payload: dict[str, Any], out: Path) -> tuple[Path, Path | None]:
    """`out`/zoo-<device>.json, then .png (median ms of eager, raw copy+replay and runner(x) per row;
    None without matplotlib). The JSON comes first: a failing chart never costs the numbers."""
    stem, rows = out / f"zoo-{device_slug(payload['device'])}", payload["results"]
    json_path = write_json(stem.with_suffix(".json"), payload)
    series = {label: [table_value(r, f"{mode}.median_ms") for r in rows] for label, mode in CHART_SERIES}
    title = f"zoo: {payload['device']} ({payload['backend']}, {payload['dtype']}), torch {payload['torch']}"
    title += f" - {payload['note']}" if payload["note"] else ""
    groups = [f"{r['model']} b{r['batch']}" for r in rows]
    ylabel = "median ms per call (log scale)"
    return json_path, bar_chart(stem.with_suffix(".png"), groups, series, ylabel=ylabel, title=title)
