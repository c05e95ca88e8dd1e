"""What `bench pipeline`'s numbers mean: the issue's targets with `met` computed, the table, JSON and PNG.

Kept apart from the measurement in pipeline.py so the payload's schema is read in one place. The targets
(issue 17, on an H200) are goals printed next to the measurements, never claims; every value is computed
from this run's timings, and on the CPU (sim backend) none of them means anything.
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
    write_json,
)

CPU_NOTE = "cpu: sim backend, timings not meaningful"
MIN_ACT_SPEEDUP = 3.0  # act() mean, eager over graph
MAX_P99_OVER_P50 = 1.3  # act() with graphs
MIN_JITTER_RATIO = 3.0  # act() std, eager over graph
MIN_SHARE_KEPT = 0.8  # prefix forced eager: share of the full speedup's saved time kept
MAX_STARTUP_EXTRA_S = 5.0  # first action with both stages captured, beyond the eager pipeline's
TABLE = ("what", "pipeline", "mean_ms", "p50_ms", "p99_ms", "std_ms", "p99/p50", "speedup")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def act_summary(measured: dict[str, Any]) -> dict[str, float | None]:
    """The derived act() numbers the targets read: speedup, p99/p50, jitter ratio, share kept, start-up."""
    act, start = measured.get("act", {}), measured.get("startup_seconds", {})

    def stat(variant: str, key: str) -> float | None:
        return act.get(variant, {}).get(key)

    eager, graph, forced = stat("eager", "mean_ms"), stat("graph", "mean_ms"), stat("prefix_eager", "mean_ms")
    saved = eager - graph if eager is not None and graph is not None else None
    kept = (
        (eager - forced) / saved if saved and saved > 0 and eager is not None and forced is not None else None
    )
    extra = start["graph"] - start["eager"] if "graph" in start and "eager" in start else None
    return {
        "speedup_mean": _ratio(eager, graph),
        "prefix_eager_speedup_mean": _ratio(eager, forced),
        "graph_p99_over_p50": _ratio(stat("graph", "p99_ms"), stat("graph", "p50_ms")),
        "jitter_ratio": _ratio(stat("eager", "std_ms"), stat("graph", "std_ms")),
        "prefix_eager_share_kept": kept,
        "startup_extra_seconds": extra,
    }


def _tiers_ok(capture: list[dict[str, Any]]) -> bool:
    """Both stages captured in the graph pipeline; the prefix eager and the expert captured in the forced."""
    want = {("graph", "prefix"): "graph", ("graph", "expert"): "graph"}
    want.update({("prefix_eager", "prefix"): "eager", ("prefix_eager", "expert"): "graph"})
    got = {(r["pipeline"], r["stage"]): r["tier"] for r in capture}
    return all(got.get(key) == tier for key, tier in want.items())


def pipeline_goals(summary: dict[str, float | None], valid: bool) -> list[dict[str, Any]]:
    """The issue's targets for this run, each with `met`; never met when `valid` is False (outputs or tiers
    wrong, or timings from the sim backend, which mean nothing)."""
    return [
        goal(
            "act() speedup, mean (eager / graph)", summary["speedup_mean"], ">=", MIN_ACT_SPEEDUP, "x", valid
        ),
        goal("act() graph p99 / p50", summary["graph_p99_over_p50"], "<=", MAX_P99_OVER_P50, "x", valid),
        goal("act() jitter, std eager / graph", summary["jitter_ratio"], ">=", MIN_JITTER_RATIO, "x", valid),
        goal(
            "prefix forced eager: share of the speedup kept",
            summary["prefix_eager_share_kept"],
            ">=",
            MIN_SHARE_KEPT,
            "",
            valid,
        ),
        goal(
            "start-up to first action, capture beyond eager",
            summary["startup_extra_seconds"],
            "<=",
            MAX_STARTUP_EXTRA_S,
            " s",
            valid,
        ),
    ]


def pipeline_payload(
    measured: dict[str, Any],
    backend: str,
    dtype: str,
    config: dict[str, Any],
    iters: int,
    warmup: int,
    error: str | None = None,
    runtime: str = "torch",
) -> dict[str, Any]:
    """The whole result: environment, settings, per-stage and act() timings, capture, start-up, targets."""
    meaningful = backend == "cuda"
    tiers_ok = _tiers_ok(measured.get("capture", []))
    outputs_ok = bool(measured.get("outputs_match", False))
    summary = act_summary(measured)
    return {
        "benchmark": "pipeline",
        **environment(),
        "backend": backend,
        "runtime": runtime,  # torch: GraphRunner stages; ort: OrtRunner stages over exported .onnx files
        "dtype": dtype,
        "policy": config,
        "timings_meaningful": meaningful,
        "note": "" if meaningful else CPU_NOTE,
        "timing": "host perf_counter per call, device synced before and after each call, modes interleaved",
        "iters": iters,
        "warmup": warmup,
        "ok": error is None and outputs_ok and tiers_ok,
        "error": error,
        "tiers_as_expected": tiers_ok,
        **{k: measured.get(k) for k in ("outputs_match", "mismatch", "max_abs_diff")},
        "stages": measured.get("stages", {}),
        "act": measured.get("act", {}),
        "capture": measured.get("capture", []),
        "startup_seconds": measured.get("startup_seconds", {}),
        "summary": summary,
        "goals": pipeline_goals(summary, meaningful and outputs_ok and tiers_ok),
    }


def table_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage or act() and pipeline, with its speedup over the eager pipeline (mean)."""
    rows = []
    sections = [(f"{stage} stage", modes) for stage, modes in payload["stages"].items()]
    sections.append(("act()", payload["act"]))
    for what, modes in sections:
        eager = modes.get("eager", {}).get("mean_ms")
        for variant, s in modes.items():
            rows.append(
                {
                    "what": what,
                    "pipeline": variant,
                    **{k: s[k] for k in ("mean_ms", "p50_ms", "p99_ms", "std_ms")},
                    "p99/p50": _ratio(s["p99_ms"], s["p50_ms"]),
                    "speedup": _ratio(eager, s["mean_ms"]),
                }
            )
    return rows


def print_pipeline(payload: dict[str, Any]) -> None:
    """Headline, timings, capture, start-up, problems, targets, then the payload as one JSON line."""
    runtime = " on onnxruntime" if payload.get("runtime") == "ort" else ""
    print(f"pipeline{runtime} ({payload['backend']}, {payload['dtype']}) on {headline(payload)}")
    if payload["note"]:
        print(payload["note"])
    print_table(table_rows(payload), TABLE)
    print_table(
        payload["capture"],
        ("pipeline", "stage", "tier", "captured", "capture_seconds", "graph_mib", "reason"),
    )
    start = payload["startup_seconds"]
    print("start-up to first action (s): " + ", ".join(f"{v} {s:.2f}" for v, s in start.items()))
    if payload["error"] is not None:
        print(f"PROBLEM: the run failed part-way: {payload['error']}")
    if payload["mismatch"]:
        print(f"PROBLEM: outputs differ from eager: {payload['mismatch']}")
    if not payload["tiers_as_expected"]:
        print(
            "PROBLEM: a stage did not capture (or the forced prefix did not fall back); see the capture table"
        )
    print_goals(payload["goals"])
    print(json.dumps(payload, default=str))


def save_pipeline(payload: dict[str, Any], out: Path) -> tuple[Path, Path | None]:
    """`out`/pipeline-<device>.json (pipeline-ort-<device>.json for --backend ort), then .png (mean ms per
    stage and act(), per pipeline; None without matplotlib). The JSON comes first: a failing chart never
    costs the numbers."""
    kind = "pipeline-ort" if payload.get("runtime") == "ort" else "pipeline"
    stem = out / f"{kind}-{device_slug(payload['device'])}"
    json_path = write_json(stem.with_suffix(".json"), payload)
    sections = {**{f"{k} stage": v for k, v in payload["stages"].items()}, "act()": payload["act"]}
    groups = list(sections)
    series = {
        variant: [sections[g].get(variant, {}).get("mean_ms") for g in groups]
        for variant in ("eager", "graph", "prefix_eager")
    }
    title = (
        f"{kind}: {payload['device']} ({payload['backend']}, {payload['dtype']}), torch {payload['torch']}"
    )
    title += f" - {payload['note']}" if payload["note"] else ""
    ylabel = "mean ms per call (log scale)"
    return json_path, bar_chart(stem.with_suffix(".png"), groups, series, ylabel=ylabel, title=title)
