"""What the decode benchmark's numbers mean: the bandwidth floor, the targets, the table, JSON and PNG.

Kept apart from the measurement in decode.py so the payload's schema is read in one place. The floor is
the time to read, once, the bytes a decode step cannot avoid reading: every projection weight and the LM
head (the embedding table only for the batch's rows), and the KV cache the batch has filled. Targets are
printed as goals next to the measurements, never as claims; on the CPU none can be met.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from graphrun.bench.decode_bytes import floor_bytes
from graphrun.bench.decode_profile import PROFILE_REPLAYS, print_profile
from graphrun.bench.decode_setup import BLOCK_STEPS
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
from graphrun.bench.timing import release_memory, time_calls
from graphrun.envvars import triton_disabled

if TYPE_CHECKING:
    from graphrun.bench.decode_setup import DecodeSetup
    from graphrun.llm.config import ModelConfig

PEER_LABELS = {  # peers.py mode -> what it is
    "hf_eager": "transformers eager, dynamic cache",
    "hf_compile": "transformers static cache + torch.compile",
}
CPU_NOTE = "cpu: tiny preset on the sim backend; these timings mean nothing (a smoke test of the code path)"
MAX_FLOOR_RATIO = {1: 2.0, 64: 1.5}  # graph step / floor, by batch size
MIN_SPEEDUP = {("hf_compile", 4): 3.0, ("hf_compile", 16): 3.0, ("hf_eager", 1): 20.0}
MAX_CAPTURE_SECONDS = 10.0  # the default decode ladder, both kinds (greedy and sampling)
MIN_GENERATE_TOKENS_PER_S = 700.0  # end to end at batch 1, prefill included
TABLE = {  # header -> row key, or "mode.stat" for one statistic of one timed mode
    "batch": "batch",
    "eager_ms": "eager.median_ms",
    "graph_ms": "graph.median_ms",
    "sync_ms": "graph_sync.median_ms",
    "replay_ms": "replay.median_ms",
    "speedup": "speedup",
    "floor_ms": "floor_ms",
    "graph/floor": "graph_over_floor",
    "sync/floor": "graph_sync_over_floor",
    "GB/s": "achieved_gbs",
    "tok/s": "tokens_per_s",
    "hf_eager_ms": "hf_eager_ms",
    "hf_compile_ms": "hf_compile_ms",
    "x_hf_eager": "speedup_vs_hf_eager",
    "x_hf_compile": "speedup_vs_hf_compile",
    "tokens_ok": "tokens_match",
}
CHART_SERIES = {
    "graphrun eager": "eager.median_ms",
    "graphrun graph": "graph.median_ms",
    "graphrun graph, synchronized": "graph_sync.median_ms",
    "graph replay (device)": "replay.median_ms",
    "bandwidth floor": "floor_ms",
    "transformers eager": "hf_eager_ms",
    "transformers static+compile": "hf_compile_ms",
}


@dataclass(frozen=True, slots=True)
class StepFloor:
    """The bytes one decode step must read, and the copy bandwidth (bytes/s) that sets how long it takes."""

    nbytes: float
    bandwidth: float

    def against(self, step_ms: float) -> dict[str, float]:
        """Floor ms, a measured step's multiple of it, and the step's achieved GB/s."""
        floor_s, step_s = self.nbytes / self.bandwidth, step_ms / 1e3
        return {
            "floor_bytes": self.nbytes,
            "floor_ms": floor_s * 1e3,
            "graph_over_floor": step_s / floor_s,
            "achieved_gbs": self.nbytes / step_s / 1e9,
        }


def step_floor(config: ModelConfig, batch: int, context: float, itemsize: int, bandwidth: float) -> StepFloor:
    """The floor of one decode step of `batch` sequences holding `context` tokens each."""
    return StepFloor(floor_bytes(config, batch, context, itemsize), bandwidth)


def copy_bandwidth(device: str, nbytes: int, sync: Callable[[], None]) -> float:
    """Device copy bandwidth in bytes/s (bytes read + written), median of 10 copies of `nbytes`."""
    seconds = _copy_seconds(device, nbytes, sync)
    release_memory()  # the two buffers are gone: give their memory back before the KV cache is sized
    return 2 * nbytes / seconds


def _copy_seconds(device: str, nbytes: int, sync: Callable[[], None]) -> float:
    src = torch.full((nbytes,), 7, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    mode = "events" if src.is_cuda else "host"
    return statistics.median(time_calls(lambda: dst.copy_(src), 10, 2, sync, mode=mode))


def _block_steps() -> int:
    return BLOCK_STEPS


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _merge_peers(rows: list[dict[str, Any]], peers: Mapping[str, Any] | None) -> None:
    """Copy each peer's per-step ms onto the graphrun row of the same batch, with the speedup over it."""
    modes = (peers or {}).get("modes", {})
    for row in rows:
        for mode, result in modes.items():
            point = next((p for p in result.get("points", []) if p["batch"] == row["batch"]), None)
            if point is None:
                continue  # not attempted at this batch size
            ms = point.get("per_step_ms")
            row[f"{mode}_ms"] = ms
            row[f"speedup_vs_{mode}"] = ms / row["graph"]["median_ms"] if ms else None


def decode_goals(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for what this run measured, each with `met` (never met on the CPU)."""
    valid = bool(payload["timings_meaningful"])
    rows = {r["batch"]: r for r in payload["results"]}
    out = []
    for batch, limit in MAX_FLOOR_RATIO.items():
        if batch in rows:
            value = rows[batch]["graph_over_floor"]
            out.append(goal(f"b{batch} graph step / bandwidth floor", value, "<=", limit, "x", valid))
    for (mode, batch), limit in MIN_SPEEDUP.items():
        if batch in rows and f"{mode}_ms" in rows[batch]:
            value = rows[batch][f"speedup_vs_{mode}"]
            what = f"b{batch} graph step speedup over {PEER_LABELS[mode]}"
            out.append(goal(what, value, ">=", limit, "x", valid))
    engine, generate = payload["engine"], payload["generate"]
    if engine is not None:
        sizes = f"{len(engine['capture_sizes'])}-rung default ladder"
        seconds, captured = engine["capture_seconds"], bool(engine["decode_graphs"])
        out.append(
            goal(f"{sizes} capture, both kinds", seconds, "<=", MAX_CAPTURE_SECONDS, " s", valid and captured)
        )
    if generate is not None:
        tps = generate["tokens_per_s"]
        out.append(goal("b1 end-to-end generate", tps, ">=", MIN_GENERATE_TOKENS_PER_S, " tok/s", valid))
    return out


def decode_payload(
    setup: DecodeSetup, measured: Mapping[str, Any], peers: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The whole result: environment, settings, per-batch rows (peers merged), generate, peers, targets.

    `measured` may be partial: a run that failed has its `error`, and None or fewer rows for what it
    did not reach; `ok` is then False.
    """
    rows = [dict(r) for r in measured["results"]]
    _merge_peers(rows, peers)
    generate = measured["generate"]
    payload: dict[str, Any] = {
        "benchmark": "decode",
        **environment(),
        "transformers": _version("transformers"),
        "triton": _version("triton"),
        "triton_disabled": triton_disabled(),
        "model": setup.model,
        "dtype": setup.dtype,
        "backend": "cuda" if setup.cuda else "sim",
        "timings_meaningful": setup.cuda,
        "note": "" if setup.cuda else CPU_NOTE,
        "timing": (
            "engine.step() on pure decode batches, graph and eager alternating in blocks. graph/eager "
            "(pipelined, what the goals use): asynchronous scheduling, blocks of "
            f"{_block_steps()} consecutive steps timed return to return, no device sync between, per step; "
            "graph_sync/eager_sync: "
            "a device sync before and after each step (host and device time added); replay: CUDA events "
            "around the zero-copy greedy runner call (device time)"
        ),
        "floor": "(projections + lm_head + batch embedding rows + batch * context_mean KV) / copy bandwidth",
        "settings": {
            "batch_sizes": list(setup.batch_sizes),
            "context": setup.context,
            "new_tokens": setup.new_tokens,
            "steps": setup.steps,
            "warmup": setup.warmup,
            "peers": setup.peers,
            "peer_batch_sizes": list(setup.peer_batch_sizes) if setup.peers else [],
            "cuda_graph_mode": setup.cuda_graph_mode,
        },
        "copy_bandwidth_gbs": measured["copy_bandwidth_gbs"],
        "model_config": measured["model_config"],
        "engine": measured["engine"],
        "ok": measured["error"] is None
        and all(r["tokens_match"] for r in rows)
        and generate is not None
        and generate["tokens_match_eager"],
        "error": measured["error"],
        "results": rows,
        "generate": generate,
        "peers": peers,
        "profile": _profile_section(measured) if setup.profile else None,
    }
    payload["goals"] = decode_goals(payload)
    return payload


def _profile_section(measured: Mapping[str, Any]) -> dict[str, Any]:
    """--profile's section: how it was taken, and per batch size the classes and kernels of one step."""
    return {
        "what": (
            f"{PROFILE_REPLAYS} replays of the greedy decode graph under torch.profiler (CUDA activity), "
            "after the timed runs, on fresh requests at context + 1 cached tokens; kernels grouped by name "
            "(bench/decode_profile.py); floor_ms: the class's own bytes (projection weights, LM head "
            "weight, filled KV cache) at the measured copy bandwidth; share: of the step's busy device time"
        ),
        "points": measured.get("profile", []),
    }


def print_decode(payload: Mapping[str, Any]) -> None:
    """Headline, table, capture and generate lines, peers' notes, targets, then one JSON line."""
    print(f"decode ({payload['model']}, {payload['dtype']}, {payload['backend']}) on {headline(payload)}")
    if payload["note"]:
        print(payload["note"])
    rows = payload["results"]
    print_table([{head: table_value(r, key) for head, key in TABLE.items()} for r in rows], list(TABLE))
    engine, gen = payload["engine"], payload["generate"]
    if engine is not None and gen is not None:
        _print_engine_line(payload["copy_bandwidth_gbs"], engine, gen)
    if payload["profile"] is not None:
        print_profile(payload["profile"]["points"])
    for line in _problems(payload):
        print(line)
    print_goals(payload["goals"])
    print(json.dumps(payload, default=str))


def _print_engine_line(bandwidth_gbs: float, engine: Mapping[str, Any], gen: Mapping[str, Any]) -> None:
    print(
        f"copy bandwidth {bandwidth_gbs:.1f} GB/s; ladder {engine['capture_sizes']} "
        f"captured in {engine['capture_seconds']:.2f} s, pool {engine['graph_pool_mib']:.1f} MiB; "
        f"generate b1: {gen['new_tokens']} tokens in {gen['seconds']:.3f} s = {gen['tokens_per_s']:.0f} tok/s"
        + (
            f" (synchronous scheduling: {gen['sync_tokens_per_s']:.0f} tok/s)"
            if "sync_tokens_per_s" in gen
            else ""
        )
    )


def _problems(payload: Mapping[str, Any]) -> list[str]:
    """Lines naming disagreeing tokens and failed peers."""
    rows = payload["results"]
    out = [
        f"PROBLEM b{r['batch']}: graph and eager greedy tokens differ" for r in rows if not r["tokens_match"]
    ]
    if payload["error"] is not None:
        out.append(f"PROBLEM: the run failed after {len(rows)} batch sizes: {payload['error']}")
    elif not payload["generate"]["tokens_match_eager"]:
        out.append("PROBLEM generate b1: graph (async or sync) and eager greedy tokens differ")
    peers = payload["peers"] or {}
    if peers.get("error"):
        out.append(f"peers failed: {peers['error']}")
    for mode, result in peers.get("modes", {}).items():
        out += [f"peer {mode} b{p['batch']} failed: {p['error']}" for p in result["points"] if p.get("error")]
    parity = peers.get("greedy_parity") or {}
    if "num_leading_agree" in parity:
        agree, checked = parity["num_leading_agree"], parity["num_checked"]
        out.append(f"greedy tokens, graphrun vs transformers eager at b1: first {agree} of {checked} agree")
    elif parity.get("error"):
        out.append(f"greedy parity check failed: {parity['error']}")
    return out


def save_decode(payload: Mapping[str, Any], out: Path) -> tuple[Path, Path | None]:
    """`out`/decode-<device>.json, then .png (ms per decode step by batch size, each mode and the floor;
    None without matplotlib). The JSON comes first: a failing chart never costs the numbers."""
    stem, rows = out / f"decode-{device_slug(payload['device'])}", payload["results"]
    json_path = write_json(stem.with_suffix(".json"), payload)
    series: dict[str, Sequence[float | None]] = {}
    for label, key in CHART_SERIES.items():
        values = [table_value(r, key) for r in rows]
        if any(v is not None for v in values):
            series[label] = values
    title = f"decode {payload['model']} ({payload['dtype']}): {payload['device']}, torch {payload['torch']}"
    title += f"\n{payload['note']}" if payload["note"] else ""
    groups = [f"b{r['batch']}" for r in rows]
    png = bar_chart(stem.with_suffix(".png"), groups, series, ylabel="ms per decode step (log)", title=title)
    return json_path, png
