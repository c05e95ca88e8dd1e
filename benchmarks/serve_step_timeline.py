"""Where a served request's time goes, from a `graphrun serve` step trace (--trace-file).

    python benchmarks/serve_step_timeline.py TRACE.json [--json OUT.json]

Reads the per-step records (serve/trace.py: kind, rows, tokens, queue length, running set, host times)
and prints: per step kind, how many steps, their tokens and the wall time between step starts; the
queue (waiting) and running set over the run; and the share of wall time spent in each kind. It prints
what the trace holds, nothing else; `--json` writes the same numbers for benchmarks/results/experiments/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Any


def _q(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def analyse(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-kind step counts, tokens and wall seconds; queue and running-set quantiles."""
    launched = [s for s in steps if s.get("kind")]
    if len(launched) < 2:
        return {"steps": len(launched)}
    wall = launched[-1]["start"] - launched[0]["start"]
    kinds: dict[str, dict[str, Any]] = {}
    for this, nxt in itertools.pairwise(launched):
        gap = nxt["start"] - this["start"]
        k = kinds.setdefault(this["kind"], {"steps": 0, "tokens": [], "rows": [], "ms": []})
        k["steps"] += 1
        k["tokens"].append(this["tokens"])
        k["rows"].append(this["rows"])
        k["ms"].append(gap * 1e3)
    summary: dict[str, Any] = {"steps": len(launched), "wall_s": wall, "kinds": {}}
    for name, k in kinds.items():
        total_ms = sum(k["ms"])
        summary["kinds"][name] = {
            "steps": k["steps"],
            "share_of_wall": total_ms / 1e3 / wall,
            "tokens_median": statistics.median(k["tokens"]),
            "tokens_p90": _q(k["tokens"], 0.9),
            "rows_median": statistics.median(k["rows"]),
            "step_ms_median": statistics.median(k["ms"]),
            "step_ms_p90": _q(k["ms"], 0.9),
            "tokens_per_s": sum(k["tokens"]) / (total_ms / 1e3) if total_ms else float("nan"),
        }
    waiting = [float(s.get("waiting", 0)) for s in launched]
    running = [float(s.get("running", 0)) for s in launched]
    summary["waiting"] = {"median": _q(waiting, 0.5), "p90": _q(waiting, 0.9), "max": max(waiting)}
    summary["running"] = {"median": _q(running, 0.5), "p90": _q(running, 0.9), "max": max(running)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data = json.loads(args.trace.read_text())
    summary = analyse(data["steps"])
    print(f"{summary['steps']} steps over {summary.get('wall_s', 0):.2f} s")
    for name, k in summary.get("kinds", {}).items():
        print(
            f"{name:8s} steps {k['steps']:6d}  wall {k['share_of_wall']:6.1%}"
            f"  tokens p50 {k['tokens_median']:6.0f} p90 {k['tokens_p90']:6.0f}"
            f"  rows p50 {k['rows_median']:4.0f}"
            f"  step ms p50 {k['step_ms_median']:7.2f} p90 {k['step_ms_p90']:7.2f}"
            f"  {k['tokens_per_s']:9.0f} tok/s"
        )
    for key in ("waiting", "running"):
        if key in summary:
            v = summary[key]
            print(f"{key:8s} p50 {v['median']:.0f}  p90 {v['p90']:.0f}  max {v['max']:.0f}")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
