"""What `graphrun bench decode --tp` reports: one row per (batch size, TP size), the ratios, the targets.

Kept apart from the measurement (decode_tp.py) so the ratios and goals are pure functions of the
measured medians, testable on given timings. Per row: graph and eager step medians, graph speedup over
eager, the all-reduce share of the graph step (a graph of only the step's all-reduces, timed alone,
over the graph step; decode_tp_comm.py), the share of all its collectives (the logits all-gather
included), and the TP=N graph step over the TP=1 graph step at the same batch size. The issue's targets
are printed as goals, computed from the rows, never as claims: on the CPU none can be met.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphrun.bench.decode_setup import TP_ITERS_PER_STEP, TP_ROUNDS, TP_WARMUP
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

if TYPE_CHECKING:
    from graphrun.bench.decode_setup import DecodeSetup

TARGET_MODEL = "qwen3-8b-shape"  # the model the targets were set for
MAX_TP2_OVER_TP1 = 0.6  # batch 1: TP=2 graph step / TP=1 graph step
MIN_TP2_SPEEDUP = 3.0  # batch 1: TP=2 graph step's speedup over eager
CPU_NOTE = (
    "cpu: gloo ranks, tiny preset, sim graphs; these timings mean nothing (a smoke test of the code path)"
)
TABLE = (
    "batch",
    "tp",
    "graph_ms",
    "eager_ms",
    "speedup",
    "allreduce_ms",
    "allreduce_share",
    "comm_share",
    "vs_tp1",
)


def tp_rows(measured: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows by batch size then TP size, each rank 0's medians with the ratios computed from them."""
    rows = [dict(r, tp=tp) for tp, result in measured.items() for r in result["rows"]]
    rows.sort(key=lambda r: (r["batch"], r["tp"]))
    single = {r["batch"]: r["graph"]["median_ms"] for r in rows if r["tp"] == 1}
    for row in rows:
        graph, eager = row["graph"]["median_ms"], row["eager"]["median_ms"]
        allreduce, comm = _median(row.get("all_reduce")), _median(row.get("all_collectives"))
        base = single.get(row["batch"])
        row.update(
            graph_ms=graph,
            eager_ms=eager,
            speedup=eager / graph,
            allreduce_ms=allreduce,
            allreduce_share=allreduce / graph if allreduce is not None else 0.0,
            comm_ms=comm,
            comm_share=comm / graph if comm is not None else 0.0,
            vs_tp1=graph / base if base is not None else None,
        )
    return rows


def _median(summary: Mapping[str, float] | None) -> float | None:
    return summary["median_ms"] if summary is not None else None


def tp_goals(rows: Sequence[Mapping[str, Any]], setup: DecodeSetup) -> list[dict[str, Any]]:
    """The issue's targets this run can speak to (batch 1 and TP=2 asked for), each with `met`."""
    if 1 not in setup.batch_sizes or 2 not in setup.tp_sizes:
        return []
    valid = setup.cuda
    tp2 = next((r for r in rows if r["batch"] == 1 and r["tp"] == 2), None)
    model = f" ({setup.model})"
    out = []
    if 1 in setup.tp_sizes:
        ratio = tp2["vs_tp1"] if tp2 is not None else None
        out.append(
            goal(f"b1 TP=2 graph step / TP=1 graph step{model}", ratio, "<=", MAX_TP2_OVER_TP1, "x", valid)
        )
    speedup = tp2["speedup"] if tp2 is not None else None
    out.append(goal(f"b1 TP=2 graph speedup over eager{model}", speedup, ">=", MIN_TP2_SPEEDUP, "x", valid))
    return out


def tp_payload(
    setup: DecodeSetup, measured: Mapping[int, Mapping[str, Any]], errors: Mapping[int, str]
) -> dict[str, Any]:
    """The whole result: environment, settings, per-size engines, rows, errors, goals, ok."""
    rows = tp_rows(measured)
    payload: dict[str, Any] = {
        "benchmark": "decode-tp",
        **environment(),
        "model": setup.model,
        "dtype": setup.dtype,
        "backend": "cuda" if setup.cuda else "sim",
        "timings_meaningful": setup.cuda,
        "note": "" if setup.cuda else CPU_NOTE,
        "target_model": TARGET_MODEL,
        "timing": (
            "per TP size N, N fresh rank processes (rank r on cuda:r, NCCL); per batch size, after a fill to "
            "`context` tokens, one decode step's greedy graph replayed (graph) and its eager function "
            "(eager) on the same inputs, interleaved in rounds, calls back to back, CUDA events (device "
            "time of consecutive calls: max(host, device)); medians of rank 0 (every rank's in *_by_rank)"
        ),
        "collectives": (
            "recorded from the eager step (every _c10d_functional op it issues), then the same ops on "
            "buffers of the same shapes captured alone in a graph and timed like the step: allreduce_ms (the "
            "all-reduces only), comm_ms (all, the logits all-gather included); shares are over graph_ms"
        ),
        "settings": {
            "tp_sizes": list(setup.tp_sizes),
            "batch_sizes": list(setup.batch_sizes),
            "context": setup.context,
            "timed_calls": TP_ITERS_PER_STEP * setup.steps,
            "rounds": TP_ROUNDS,
            "warmup_calls": TP_WARMUP,
            "seed": setup.seed,
        },
        "engines": {str(tp): result["engine"] for tp, result in measured.items()},
        "errors": {str(tp): error for tp, error in errors.items()},
        "ok": not errors and set(measured) == set(setup.tp_sizes) and all(r["tokens_match"] for r in rows),
        "results": rows,
    }
    payload["goals"] = tp_goals(rows, setup)
    return payload


def print_tp(payload: Mapping[str, Any]) -> None:
    """Headline, table, errors, targets, then one JSON line."""
    sizes = " ".join(map(str, payload["settings"]["tp_sizes"]))
    what = f"{payload['model']}, {payload['dtype']}, {payload['backend']}"
    print(f"decode --tp {sizes} ({what}) on {headline(payload)}")
    if payload["note"]:
        print(payload["note"])
    print_table(payload["results"], TABLE)
    for tp, error in payload["errors"].items():
        print(f"PROBLEM TP={tp}: {error}")
    for row in payload["results"]:
        if not row["tokens_match"]:
            print(f"PROBLEM b{row['batch']} TP={row['tp']}: graph and eager greedy tokens differ")
    if payload["goals"] and payload["model"] != payload["target_model"]:
        print(f"the targets were set for {payload['target_model']}; this run measured {payload['model']}")
    print_goals(payload["goals"])
    print(json.dumps(payload, default=str))


def save_tp(payload: Mapping[str, Any], out: Path) -> tuple[Path, Path | None]:
    """`out`/decode-tp-<device>.json, then .png (graph and eager ms by batch size, per TP size)."""
    stem = out / f"decode-tp-{device_slug(payload['device'])}"
    json_path = write_json(stem.with_suffix(".json"), json.loads(json.dumps(payload, default=str)))
    rows = payload["results"]
    batches = sorted({r["batch"] for r in rows})
    series: dict[str, list[float | None]] = {}
    for tp in payload["settings"]["tp_sizes"]:
        for path in ("graph", "eager"):
            by_batch = {r["batch"]: r[f"{path}_ms"] for r in rows if r["tp"] == tp}
            series[f"TP={tp} {path}"] = [by_batch.get(b) for b in batches]
    title = (
        f"decode --tp {payload['model']} ({payload['dtype']}): {payload['device']}, torch {payload['torch']}"
    )
    title += f"\n{payload['note']}" if payload["note"] else ""
    groups = [f"b{b}" for b in batches]
    png = bar_chart(stem.with_suffix(".png"), groups, series, ylabel="ms per decode step (log)", title=title)
    return json_path, png
