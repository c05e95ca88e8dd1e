"""Start-up with `--capture background` against eager and normal start-up: when can a server answer?

Target (issue 15): with `--capture background`, the first successful request comes no later than the
eager server's first one + 1 s, and no request fails while the rungs switch from eager to replay.

Each mode starts `graphrun serve` as a child process (graphrun.bench.serve_process) and times, from
spawn: the first 200 on /health, the first successful completion (sent as soon as /health says 200),
and, from /health's `graphs`, the moment every rung is captured. From the first 200 until capture ends,
CLIENTS threads send greedy completions of a few fixed prompts in a loop; any non-200 is a failed
request, and each prompt's text must equal its text once every rung is captured (the switch must not
change an answer). Modes: eager (--enforce-eager), now (the default: /health waits for the graphs),
background.

    PYTHONPATH=src python benchmarks/background_startup.py [--model M] [--out benchmarks/results]

--model defaults to qwen3-0.6b-shape with CUDA, else tiny (then with the graph simulator and a short
max_model_len, a CPU smoke run of the same code path). Prints a table, then one JSON line; --out also
writes background-startup-<device>.json there with device, torch, date and commit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import torch

from graphrun.bench.report import (
    emit,
    environment,
    goal,
    headline,
    print_goals,
    print_table,
)
from graphrun.bench.serve_process import ServerProcess, free_port

MODES = {"eager": ["--enforce-eager"], "now": ["--capture", "now"], "background": ["--capture", "background"]}
PROMPTS = ("The capital of France is", "Once upon a time", "def fibonacci(n):", "1, 2, 3, 5, 8,")
CPU_FLAGS = ["--graph-backend", "sim", "--max-model-len", "256", "--max-num-seqs", "8"]
SLACK_S = 1.0  # the target: background's first answer within eager's + 1 s


@dataclass(slots=True)
class ModeResult:
    """One server start: seconds from spawn, and what the load met while the rungs switched."""

    mode: str
    health_s: float | None = None
    first_ok_s: float | None = None
    all_captured_s: float | None = None
    graphs: str = ""
    num_requests: int = 0
    num_failed: int = 0
    num_changed: int = 0  # prompts whose answer during the switch differs from the one after it
    errors: list[str] = field(default_factory=list)


def complete(client: httpx.Client, url: str, prompt: str, max_tokens: int) -> httpx.Response:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}  # no model: the served one
    return client.post(url + "/v1/completions", json=body)


def text_of(response: httpx.Response) -> str:
    """The completion's text; raises on an error response."""
    response.raise_for_status()
    return str(response.json()["choices"][0]["text"])


class Load:
    """CLIENTS threads sending completions in a loop until stop(); answers kept per prompt."""

    def __init__(self, url: str, clients: int, max_tokens: int) -> None:
        self.url, self.max_tokens = url, max_tokens
        self.answers: dict[str, set[str]] = {p: set() for p in PROMPTS}
        self.num_requests = self.num_failed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self, index: int) -> None:
        with httpx.Client(timeout=120) as client:
            i = index
            while not self._stop.is_set():
                prompt = PROMPTS[i % len(PROMPTS)]
                i += 1
                try:
                    response = complete(client, self.url, prompt, self.max_tokens)
                    ok, text = response.status_code == 200, response.text
                except httpx.HTTPError as exc:
                    ok, text = False, repr(exc)
                with self._lock:
                    self.num_requests += 1
                    if ok:
                        self.answers[prompt].add(json.loads(text)["choices"][0]["text"])
                    else:
                        self.num_failed += 1
                        self.errors.append(text[:200])

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(180)


def graphs_done(server: ServerProcess) -> tuple[bool, str]:
    """Whether /health says every rung is captured (or graphs are off), and what it says."""
    graphs = str(server.get("/health").json().get("graphs", ""))
    return not graphs.startswith("capturing"), graphs


def run_mode(mode: str, args: argparse.Namespace, flags: list[str], logs: Path) -> ModeResult:
    port = free_port()
    argv = ["-m", "graphrun", "serve", "--model", args.model, "--port", str(port), *flags, *MODES[mode]]
    server = ServerProcess(argv, logs / f"{mode}.log", f"http://127.0.0.1:{port}")
    result = ModeResult(mode)
    try:
        result.health_s, _ = server.wait_healthy(args.startup_timeout)
        with httpx.Client(timeout=120) as client:
            first = complete(client, server.url, PROMPTS[0], args.max_tokens)
        result.first_ok_s = time.perf_counter() - server.spawned if first.status_code == 200 else None
        load = Load(server.url, args.clients, args.max_tokens)
        deadline = server.spawned + args.startup_timeout
        done, result.graphs = graphs_done(server)
        while not done and time.perf_counter() < deadline:
            time.sleep(0.05)
            done, result.graphs = graphs_done(server)
        result.all_captured_s = time.perf_counter() - server.spawned if done else None
        time.sleep(args.after_s)  # a little load once every rung replays
        load.stop()
        with httpx.Client(timeout=120) as client:
            final = {p: text_of(complete(client, server.url, p, args.max_tokens)) for p in PROMPTS}
        result.num_requests, result.num_failed = load.num_requests, load.num_failed
        result.errors = load.errors[:5]
        result.num_changed = sum(bool(texts - {final[p]}) for p, texts in load.answers.items())
    except Exception as exc:  # a mode that fails is reported, not fatal to the others
        result.errors.append(f"{type(exc).__name__}: {exc}; log tail:\n{server.log_tail(10)}")
    finally:
        server.stop(30)
    return result


def parse_args() -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwen3-0.6b-shape" if cuda else "tiny")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, from eager,now,background")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--after-s", type=float, default=1.0, help="load kept up once every rung replays")
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--serve-args", default="", help="extra `graphrun serve` flags, space-separated")
    p.add_argument("--out", default=None, help="folder for background-startup-<device>.json")
    args = p.parse_args()
    args.cpu_smoke = not cuda
    return args


def main() -> int:
    args = parse_args()
    flags = (CPU_FLAGS if args.cpu_smoke else []) + args.serve_args.split()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_mode(m, args, flags, Path(tmp)) for m in args.modes.split(",")]
    env = environment()
    by_mode = {r.mode: r for r in results}
    print(headline(env))
    columns = ("mode", "health_s", "first_ok_s", "all_captured_s", "graphs", "num_requests", "num_failed",
               "num_changed")  # fmt: skip
    print_table([asdict(r) for r in results], columns)
    goals = []
    eager, bg = by_mode.get("eager"), by_mode.get("background")
    if eager is not None and bg is not None and eager.first_ok_s is not None:
        goals.append(goal("background first answer", bg.first_ok_s, "<=", eager.first_ok_s + SLACK_S, " s"))
    if bg is not None:
        goals.append(goal("failed requests during the switch", float(bg.num_failed), "<=", 0, ""))
        goals.append(goal("answers changed by the switch", float(bg.num_changed), "<=", 0, ""))
    if goals:
        print_goals(goals)
    for r in results:
        for error in r.errors:
            print(f"{r.mode}: {error}", file=sys.stderr)
    payload = {"benchmark": "background_startup", "model": args.model, "serve_flags": flags, **env,
               "results": [asdict(r) for r in results], "goals": goals}  # fmt: skip
    emit(payload, args.out, "background-startup")
    return 0 if all(g["met"] for g in goals) and not any(r.errors for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
