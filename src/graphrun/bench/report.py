"""Benchmark reporting: a plain-text table, the environment that produced the numbers, JSON and a PNG chart.

Every result must say which device, torch and commit made it, since absolute times drift between hosts.
Printing here is intended: these functions are the CLI's report. No host name is recorded.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import torch

from graphrun.envvars import git_commit_override

log = logging.getLogger(__name__)


def table_value(row: Mapping[str, Any], key: str) -> Any:
    """A table cell's value: row[key], or row[a][b] for a dotted key "a.b" (None when missing)."""
    name, _, stat = key.partition(".")
    return (row.get(name) or {}).get(stat) if stat else row.get(key)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return (
            f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3f}" if abs(value) >= 0.01 else f"{value:.2g}"
        )
    return str(value)


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, file: TextIO | None = None
) -> None:
    """Print `rows` as an aligned text table with one column per key in `columns` (missing keys show '-')."""
    out = file if file is not None else sys.stdout
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col), *(len(r[i]) for r in cells)]) for i, col in enumerate(columns)]
    print("  ".join(col.rjust(w) for col, w in zip(columns, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)), file=out)


def goal(
    name: str, value: float | None, op: str, threshold: float, unit: str, valid: bool = True
) -> dict[str, Any]:
    """A target next to its measurement: `met` is computed (False when unmeasured or `valid` is False)."""
    if op not in ("<=", ">="):
        raise ValueError(f"op must be '<=' or '>=', got {op!r}")
    met = valid and value is not None and (value <= threshold if op == "<=" else value >= threshold)
    return {"name": name, "value": value, "goal": f"{op} {threshold:g}{unit}", "met": met}


def print_goals(goals: Sequence[Mapping[str, Any]], *, file: TextIO | None = None) -> None:
    """Print targets as a table, headed so nobody mistakes them for claims."""
    print("targets (goals to check, not claims):", file=file if file is not None else sys.stdout)
    print_table(goals, ("name", "value", "goal", "met"), file=file)


def _git(*argv: str) -> str | None:
    """Output of a git command run in this package's checkout, or None when git or the checkout is absent."""
    try:
        done = subprocess.run(
            ["git", *argv], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Device name, torch/CUDA/Python versions, UTC date, git commit and dirty flag (None when unknown)."""
    # a copied tree (the GPU machine) may carry no .git or a stale one: the caller's word wins when given
    commit, status = git_commit_override(), None
    if commit is None:
        commit = _git("rev-parse", "HEAD")
        status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit or "unknown",
        "dirty": bool(status) if status is not None else None,
    }


def headline(env: Mapping[str, Any]) -> str:
    """One line saying what produced the numbers: device, torch, CUDA, commit."""
    dirty = " (dirty)" if env.get("dirty") else ""
    return (
        f"{env['device']}, torch {env['torch']}, cuda {env['cuda']}, python {env['python']}, "
        f"commit {str(env['commit'])[:12]}{dirty}, {env['date']}"
    )


def device_slug(device: str) -> str:
    """A file-name-safe form of a device name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "unknown"


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write `payload` as indented JSON, creating parent folders; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return target


def emit(payload: Mapping[str, Any], out: str | Path | None, name: str) -> Path | None:
    """A benchmark's closing output: its JSON line on stdout and, with `out`, the same result written as
    <out>/<name>-<device slug>.json (payload["device"] names the device)."""
    print(json.dumps(payload, default=str))
    if out is None:
        return None
    return write_json(Path(out) / f"{name}-{device_slug(payload['device'])}.json", payload)


def written(*paths: Path | None) -> str:
    """The files a report wrote, for its closing log line (a skipped chart is None and left out)."""
    return " and ".join(str(path) for path in paths if path is not None)


def can_plot(path: str | Path) -> bool:
    """True when matplotlib imports; otherwise one warning that the chart at `path` was skipped.

    matplotlib is the optional `bench` extra: a run without it still prints its table and writes its JSON.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning(
            "plot %s skipped: matplotlib is not installed (pip install 'graphrun[bench]'); "
            "the table and JSON are complete",
            path,
        )
        return False
    return True


def bar_chart(
    path: str | Path,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    ylabel: str,
    title: str,
    log_scale: bool = True,
) -> Path | None:
    """Grouped bars (one group per label, one bar per series) saved as PNG; missing values leave a gap.

    None when matplotlib is missing (can_plot). It is imported here, with the Agg canvas and no pyplot,
    so importing graphrun stays cheap and no global plotting state is touched.
    """
    if not can_plot(path):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.2 * len(groups) + 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [v if v is not None else float("nan") for v in values]
        ax.bar(xs, heights, width, label=label)
    ax.set_xticks(range(len(groups)), list(groups), rotation=20, ha="right")
    if log_scale:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    return target
