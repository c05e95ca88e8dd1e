"""How long `graphrun` takes to answer when it has nothing to start: help, argument errors, refused flags.

Targets (issue 14): `graphrun --help`, `graphrun serve --help` and any argument error in < 0.5 s (argparse
answers before torch loads); a refused model path, busy port or impossible setting in < 2 s, one line on
stderr, exit status 2. Each command runs RUNS times as a fresh process (wall time from start to exit,
time.perf_counter around subprocess.run), after one untimed warm-up run (file cache); the table shows
median / p90 / max, and `python -c pass` and `python -c "import torch"` as yardsticks for the machine.

    PYTHONPATH=src python benchmarks/cli_startup.py [--runs 10] [--out benchmarks/results]

Prints a table, then one JSON line; --out also writes cli-startup-<machine>.json there. Uses only the
standard library, so it measures graphrun's imports and nothing of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

HELP_S, REFUSE_S = 0.5, 2.0  # the targets


@dataclass(frozen=True, slots=True)
class Case:
    """One command line and what it must do: exit status, and a time target (None: a yardstick)."""

    name: str
    argv: tuple[str, ...]
    exit_code: int | None
    target_s: float | None


def cases(busy_port: int) -> list[Case]:
    py, gr = (sys.executable,), (sys.executable, "-m", "graphrun")
    return [
        Case("python -c pass", (*py, "-c", "pass"), 0, None),
        Case("python -c 'import torch'", (*py, "-c", "import torch"), 0, None),
        Case("graphrun --help", (*gr, "--help"), 0, HELP_S),
        Case("graphrun serve --help", (*gr, "serve", "--help"), 0, HELP_S),
        Case("graphrun generate --help", (*gr, "generate", "--help"), 0, HELP_S),
        Case("graphrun serve --bogus", (*gr, "serve", "--bogus"), 2, HELP_S),
        Case("graphrun serve --port eighty", (*gr, "serve", "--port", "eighty"), 2, HELP_S),
        Case("graphrun serve --model /nonexistent", (*gr, "serve", "--model", "/nonexistent"), 2, REFUSE_S),
        Case("graphrun serve --port <busy>", (*gr, "serve", "--port", str(busy_port)), 2, REFUSE_S),
        Case("graphrun serve --max-model-len 0", (*gr, "serve", "--max-model-len", "0"), 2, REFUSE_S),
        Case(
            "graphrun serve --model tiny --max-model-len 99999",
            (*gr, "serve", "--model", "tiny", "--max-model-len", "99999"),
            2,
            REFUSE_S,
        ),
        Case(
            "graphrun generate --model /nonexistent",
            (*gr, "generate", "--model", "/nonexistent", "--prompt", "hi"),
            2,
            REFUSE_S,
        ),
        Case(
            "graphrun bench decode --model /nonexistent",
            (*gr, "bench", "decode", "--model", "/x"),
            2,
            REFUSE_S,
        ),
    ]


@contextmanager
def listening_socket() -> Iterator[int]:
    """A port something is listening on, for the busy-port case."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def run_case(case: Case, runs: int) -> dict[str, object]:
    """Time `runs` fresh processes of one case (after one untimed run): figures, and the target met?"""
    subprocess.run(case.argv, capture_output=True, timeout=120, check=False)
    seconds, codes, stderr_lines = [], set(), set()
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(case.argv, capture_output=True, text=True, timeout=120, check=False)
        seconds.append(time.perf_counter() - start)
        codes.add(done.returncode)
        stderr_lines.add(len(done.stderr.strip().splitlines()))
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    median = statistics.median(seconds)
    as_expected = case.exit_code is None or codes == {case.exit_code}
    return {
        **asdict(case),
        "argv": list(case.argv[1:]),
        "median_s": median,
        "p90_s": p90,
        "max_s": ordered[-1],
        "exit_codes": sorted(codes),
        "stderr_lines": sorted(stderr_lines),
        "met": None if case.target_s is None else as_expected and median < case.target_s,
    }


def environment() -> dict[str, object]:
    """Where the numbers come from (no torch import: that is what is measured)."""

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m_before": load[0] if load else None,
        "python": platform.python_version(),
        "torch": version("torch"),
        "commit": commit.stdout.strip() or "unknown",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def print_table(rows: list[dict[str, object]]) -> None:
    head = f"{'command':<52} {'median s':>9} {'p90 s':>7} {'max s':>7} {'exit':>5} {'lines':>5}"
    head += f" {'target':>7}  met"
    print(head)
    print("-" * len(head))
    for r in rows:
        target = f"< {r['target_s']}" if r["target_s"] is not None else "-"
        met = {None: "-", True: "yes", False: "NO"}[r["met"]]  # type: ignore[index]
        codes = ",".join(map(str, r["exit_codes"]))  # type: ignore[call-overload]
        lines = ",".join(map(str, r["stderr_lines"]))  # type: ignore[call-overload]
        print(
            f"{r['name']:<52} {r['median_s']:>9.3f} {r['p90_s']:>7.3f} {r['max_s']:>7.3f} "
            f"{codes:>5} {lines:>5} {target:>7}  {met}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON into this folder")
    args = parser.parse_args()
    env = environment()
    with listening_socket() as busy_port:
        rows = [run_case(case, args.runs) for case in cases(busy_port)]
    payload = {"benchmark": "cli_startup", **env, "runs": args.runs, "results": rows}
    payload["ok"] = all(r["met"] is not False for r in rows)
    print(
        f"graphrun CLI start-up, {args.runs} runs each: python {env['python']}, torch {env['torch']}, "
        f"{env['cpus']} CPUs, load {env['load_avg_1m_before']}, commit {str(env['commit'])[:12]}"
    )
    print_table(rows)
    print(json.dumps(payload))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"cli-startup-{platform.machine()}-{os.cpu_count()}cpu.json"
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
