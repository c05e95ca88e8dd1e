"""`graphrun bench serve`: the OpenAI server under a closed-loop load, decode graphs on vs enforce-eager.

Decode graphs pay off where a server spends its time: many short decode steps, each of which eager mode
launches kernel by kernel. So the benchmark measures the server as clients see it, over HTTP with SSE:
for each mode it starts `graphrun serve` in a child process (serve_process.py), times start-up to the
first healthy answer, sends untimed warm-up requests, then the timed run: N seeded requests with
long-tailed lengths (serve_workload.py) through C concurrent streams (serve_client.py). It reports
throughput, TTFT and inter-token latency percentiles, the graph replays and fallbacks the server counted,
its memory, and whether it drained and exited 0 on SIGTERM (serve_report.py). Failed requests and tokens
lost between usage and the stream are counted and listed, never dropped. Without CUDA the tiny preset
runs, graph mode on the sim backend: a smoke test of the whole path whose timings mean nothing.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from graphrun.bench.report import written
from graphrun.bench.serve_client import HTTP_CLIENTS, Load, default_client_processes, run_load
from graphrun.bench.serve_faults import ServeFaults, compare_outputs, faults_goals, kill_outcomes
from graphrun.bench.serve_process import (
    ServerProcess,
    ServerStartError,
    counter_deltas,
    cpu_seconds,
    free_port,
    graph_summary,
    machine_cpu_seconds,
)
from graphrun.bench.serve_report import (
    MAX_ERRORS_LISTED,
    print_serve,
    save_serve,
    serve_payload,
    summarize_run,
)
from graphrun.bench.serve_workload import RequestSpec, Workload, plan_requests
from graphrun.bench.wakeup import measure_wakeup
from graphrun.errors import ConfigError
from graphrun.llm.engine_config import CUDA_GRAPH_MODES
from graphrun.refuse import refuse

log = logging.getLogger(__name__)

# graph: the server's default graphs (or --cuda-graph-mode); eager: --enforce-eager; the cuda graph modes:
# one server each with that --cuda-graph-mode (a mode axis: full vs piecewise vs full_and_piecewise)
GRAPH_MODES = tuple(m for m in CUDA_GRAPH_MODES if m != "none")
MODES = ("graph", "eager", *GRAPH_MODES)
STOP_TIMEOUT_SECONDS = 60.0  # SIGTERM -> exit; the server's own drain wait is 30 s by default
MIB = 2**20
WAKEUP_PROBES = 1000  # pipe messages 2 ms apart for the machine's wake-up latency (about 2 s)


@dataclass(frozen=True, slots=True)
class ServeBenchSetup:
    """What the serving benchmark runs, fixed once from the flags and validated here."""

    model: str
    modes: tuple[str, ...]
    workload: Workload
    concurrency: int
    warmup_requests: int
    out: Path
    cuda: bool
    max_num_seqs: int | None = None  # None: the server's default
    port: int = 0  # 0: a free port per mode
    startup_timeout: float = 600.0
    request_timeout: float = 600.0
    server_args: tuple[str, ...] = ()
    log_level: str = "INFO"  # the server's, into its log file
    client_processes: int = 1  # processes the client's streams are spread over (serve_client.run_load)
    http_client: str = "raw"  # how the client reads streams: serve_client.StreamConnection, or httpx
    cuda_graph_mode: str | None = None  # mode graph's --cuda-graph-mode (None: the server's default)
    faults: ServeFaults = field(default_factory=ServeFaults)  # drills after each mode's run (default: none)

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if not self.modes or bad or len(set(self.modes)) != len(self.modes):
            raise ConfigError(f"--modes takes distinct values from {list(MODES)}, got {list(self.modes)}")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.warmup_requests < 0:
            raise ConfigError(f"--warmup-requests must be >= 0, got {self.warmup_requests}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in [0, 65535] (0: pick a free one), got {self.port}")
        if not (self.startup_timeout > 0 and self.request_timeout > 0):
            raise ConfigError("--startup-timeout and --request-timeout must be > 0 seconds")
        if self.client_processes < 1:
            raise ConfigError(f"--client-processes must be >= 1, got {self.client_processes}")
        if self.http_client not in HTTP_CLIENTS:
            raise ConfigError(f"--http-client takes one of {list(HTTP_CLIENTS)}, got {self.http_client!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeBenchSetup:
        """The flags; --model defaults to qwen3-0.6b-shape with CUDA, else tiny."""
        cuda = torch.cuda.is_available()  # no CUDA context here: the servers own the GPU
        workload = Workload(
            num_requests=args.num_requests,
            prompt_len_median=args.prompt_len_median,
            prompt_len_max=args.prompt_len_max,
            output_len_median=args.output_len_median,
            output_len_max=args.output_len_max,
            min_len=args.min_len,
            seed=args.seed,
            shared_prefix_len=args.shared_prefix_len,
            response_format=getattr(args, "response_format", "none"),
        )
        return cls(
            model=args.model or ("qwen3-0.6b-shape" if cuda else "tiny"),
            modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
            workload=workload,
            concurrency=args.concurrency,
            warmup_requests=args.warmup_requests,
            out=Path(args.out),
            cuda=cuda,
            max_num_seqs=args.max_num_seqs,
            port=args.port,
            startup_timeout=args.startup_timeout,
            request_timeout=args.request_timeout,
            server_args=tuple(part for arg in args.server_arg or () for part in shlex.split(arg)),
            log_level=getattr(args, "log_level", "INFO"),
            client_processes=(
                args.client_processes
                if getattr(args, "client_processes", None) is not None
                else default_client_processes(args.concurrency)
            ),
            http_client=getattr(args, "http_client", "raw"),
            cuda_graph_mode=getattr(args, "cuda_graph_mode", None),
            faults=ServeFaults.parse(args.faults) if getattr(args, "faults", None) else ServeFaults(),
        )

    def server_argv(self, mode: str, port: int) -> list[str]:
        """Arguments after the Python executable for one mode's server."""
        argv = ["-m", "graphrun", "--log-level", self.log_level, "serve", "--model", self.model]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        if mode == "eager":
            argv.append("--enforce-eager")
        elif not self.cuda:
            argv += ["--graph-backend", "sim"]  # the graph path, simulated on the CPU
        graph_mode = mode if mode in GRAPH_MODES else self.cuda_graph_mode if mode == "graph" else None
        if graph_mode is not None:
            argv += ["--cuda-graph-mode", graph_mode]
        if self.max_num_seqs is not None:
            argv += ["--max-num-seqs", str(self.max_num_seqs)]
        return argv + list(self.server_args)

    def load(
        self, url: str, model: str, specs: list[RequestSpec], on_done: Callable[[int], None] | None = None
    ) -> Load:
        """Send `specs` to the server at `url` as these settings say (serve_client.run_load)."""
        return run_load(
            url,
            model,
            specs,
            self.concurrency,
            self.request_timeout,
            self.client_processes,
            on_done,
            self.http_client,
        )

    def settings(self) -> dict[str, Any]:
        """The settings as the payload records them."""
        return {
            "model": self.model,
            "modes": list(self.modes),
            **asdict(self.workload),
            "concurrency": self.concurrency,
            "client_processes": self.client_processes,
            "http_client": self.http_client,
            "cuda_graph_mode": self.cuda_graph_mode,
            "warmup_requests": self.warmup_requests,
            "max_num_seqs": self.max_num_seqs,
            "server_args": list(self.server_args),
            "request_timeout": self.request_timeout,
            "startup_timeout": self.startup_timeout,
            "faults": asdict(self.faults),
        }


def _progress(mode: str, total: int) -> Callable[[int], None]:
    """A callback logging one INFO line per ~10% of `total` requests done."""
    step = max(1, math.ceil(total / 10))

    def report(done: int) -> None:
        if done % step == 0 or done == total:
            log.info("serve bench: %s: %d/%d requests done", mode, done, total)

    return report


def _warm_up(setup: ServeBenchSetup, server: ServerProcess, model: str, health: dict[str, Any]) -> list[str]:
    """Send the untimed warm-up requests; the errors of those that failed."""
    vocab, max_len = int(health["vocab_size"]), int(health["max_model_len"])
    specs = plan_requests(setup.workload, setup.warmup_requests, vocab, max_len, "warmup")
    if not specs:
        return []
    results = setup.load(server.url, model, specs).results
    return [f"warm-up request {r.index}: {r.error}" for r in results if not r.ok]


def _measure(
    setup: ServeBenchSetup, server: ServerProcess, health: dict[str, Any], run: dict[str, Any]
) -> None:
    """Warm up, run the timed requests, scrape /metrics and /health's memory; results go into `run`."""
    mode, model = run["mode"], str(health["model"])
    warmup_errors = _warm_up(setup, server, model, health)
    run["num_warmup_failed"], run["warmup_errors"] = len(warmup_errors), warmup_errors[:MAX_ERRORS_LISTED]
    w = setup.workload
    specs = plan_requests(w, w.num_requests, int(health["vocab_size"]), int(health["max_model_len"]), "timed")
    run["num_prompt_tokens"] = sum(len(s.prompt_ids) for s in specs)
    run["num_prompts_clipped"] = sum(s.clipped for s in specs)
    before = server.counters()
    pids = {"server": server.pid}
    if health.get("engine_pid") is not None:  # none: the engine runs as a thread of the server
        pids["engine"] = int(health["engine_pid"])
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    machine_before = machine_cpu_seconds()
    log.info("serve bench: %s: %d timed requests, concurrency %d", mode, len(specs), setup.concurrency)
    load = setup.load(server.url, model, specs, _progress(mode, len(specs)))
    machine_after = machine_cpu_seconds()
    cpu: dict[str, float | None] = {"client": load.client_cpu_s}
    for name, start in cpu_before.items():  # None where /proc is unreadable (not Linux)
        end = cpu_seconds(pids[name])
        cpu[name] = end - start if start is not None and end is not None else None
    run.update(summarize_run(load.results, load.wall_s))
    run["cpu_s"] = cpu  # CPU seconds each process used over the timed run (compare with wall_s)
    if machine_before is not None and machine_after is not None:  # every process, ours or not; steal
        run["machine_cpu_s"] = {k: machine_after[k] - machine_before[k] for k in machine_before}
    run["metrics"] = graph_summary(counter_deltas(before, server.counters()))
    memory = server.get("/health").json().get("memory", {})
    run["memory"] = memory
    reserved = memory.get("cuda_reserved_bytes")
    run["gpu_reserved_mib"] = reserved / MIB if reserved is not None else None
    run["max_rss_mib"] = memory["max_rss_bytes"] / MIB if "max_rss_bytes" in memory else None


def bench_mode(
    setup: ServeBenchSetup, mode: str, extra_args: Sequence[str] = (), label: str | None = None
) -> dict[str, Any]:
    """One mode end to end: start the server, measure, stop it; a start failure is recorded, not raised.
    extra_args: more server flags (a drill's); label: the run's name in logs and files (default: mode)."""
    port = setup.port or free_port()
    argv = setup.server_argv(mode, port) + list(extra_args)
    name = label or mode
    log_path = setup.out / f"serve-{name}.log"
    run: dict[str, Any] = {"mode": mode, "command": [sys.executable, *argv], "log": str(log_path)}
    log.info("serve bench: %s: starting the server on port %d (log: %s)", name, port, log_path)
    server = ServerProcess(argv, log_path, f"http://127.0.0.1:{port}")
    try:
        _run_server(setup, server, run)
    finally:
        server.kill()  # a no-op once it exited; Ctrl-C or a bug here never leaves a server behind
    log.info("serve bench: %s: server exited with %s", name, run["exit_code"])
    return run


def replay_drill(setup: ServeBenchSetup, clean: dict[str, Any]) -> dict[str, Any]:
    """The clean run's mode twice more: a control (no faults) and with replay faults; the drill's figures
    and fallbacks, and how many requests streamed the clean run's ids in each (greedy tokens of a
    half-precision model follow the batches the steps ran in, so two clean runs may differ too)."""
    mode = clean["mode"]
    control = bench_mode(setup, mode, (), f"{mode}-control")
    run = bench_mode(setup, mode, setup.faults.replay_server_args(), f"{mode}-replay-faults")
    fallbacks = run.get("metrics", {}).get("graph_eager_fallbacks", {})
    run["replay_error_fallbacks"] = int(sum(v for k, v in fallbacks.items() if "replay_error" in k))
    run["outputs"] = compare_outputs(clean.get("requests", []), run.get("requests", []))
    run["control_outputs"] = compare_outputs(clean.get("requests", []), control.get("requests", []))
    log.info(
        "serve bench: %s replay faults: %d failed, %d replay_error fallbacks, %d/%d outputs as the clean "
        "run (a second clean run: %d/%d)",
        mode, run.get("num_failed", -1), run["replay_error_fallbacks"], run["outputs"]["same"],
        run["outputs"]["compared"], run["control_outputs"]["same"], run["control_outputs"]["compared"],
    )  # fmt: skip
    return run


def kill_drill(setup: ServeBenchSetup, mode: str) -> dict[str, Any]:
    """Serve `mode`, SIGKILL its engine process once a fraction of the requests is done; how it ended."""
    port = setup.port or free_port()
    argv = setup.server_argv(mode, port)
    log_path = setup.out / f"serve-{mode}-kill.log"
    run: dict[str, Any] = {
        "mode": mode,
        "command": [sys.executable, *argv],
        "log": str(log_path),
        "error": None,
    }
    server = ServerProcess(argv, log_path, f"http://127.0.0.1:{port}")
    try:
        run.update(_kill_under_load(setup, server))
    except Exception as exc:  # recorded, never raised: the other runs' results still count
        log.exception("serve bench: %s: the kill drill failed", mode)
        run["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        server.kill()
        run["log_tail"] = server.log_tail()
    return run


def _kill_under_load(setup: ServeBenchSetup, server: ServerProcess) -> dict[str, Any]:
    _, health = server.wait_healthy(setup.startup_timeout)
    if health.get("engine_pid") is None:
        raise RuntimeError("the engine runs inside the server process (no engine_pid): nothing to kill")
    engine_pid = int(health["engine_pid"])
    w = setup.workload
    specs = plan_requests(w, w.num_requests, int(health["vocab_size"]), int(health["max_model_len"]), "timed")
    threshold = max(1, int(len(specs) * (setup.faults.kill_at or 0.5)))
    killed_at: list[float] = []

    def on_done(done: int) -> None:
        if done >= threshold and not killed_at:
            killed_at.append(time.perf_counter())
            os.kill(engine_pid, signal.SIGKILL)
            log.info(
                "serve bench: kill drill: SIGKILL to engine process %d after %d requests", engine_pid, done
            )

    load = setup.load(server.url, str(health["model"]), specs, on_done)
    if not killed_at:
        raise RuntimeError(f"the load finished before {threshold} requests were done: no kill")
    outcomes = kill_outcomes(load.results, killed_at[0], setup.request_timeout)
    try:
        answer = server.get("/health")
        health_after: dict[str, Any] = {
            "status_code": answer.status_code,
            "status": answer.json().get("status"),
        }
    except Exception as exc:  # the server may have exited already: that is allowed
        health_after = {"status_code": None, "status": f"unreachable ({type(exc).__name__})"}
    exit_code = _wait_exit(server, STOP_TIMEOUT_SECONDS)
    log.info(
        "serve bench: kill drill: %d in flight, %d ended with an error; /health %s; exit status %s",
        outcomes["in_flight"], outcomes["answered_with_error"], health_after["status"], exit_code,
    )  # fmt: skip
    return {
        "engine_pid": engine_pid,
        "killed_after_requests": threshold,
        "outcomes": outcomes,
        "after_kill_failed_fast": sum(1 for r in load.results if r.sent_at > killed_at[0] and not r.ok),
        "health_after": health_after,
        "exit_code": exit_code,
        "num_requests": len(load.results),
        "num_ok": sum(r.ok for r in load.results),
    }


def _wait_exit(server: ServerProcess, timeout: float) -> int | None:
    """The server's exit status once it exits by itself within `timeout` s (None: still running)."""
    deadline = time.monotonic() + timeout
    while server.returncode is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return server.returncode


def run_drills(setup: ServeBenchSetup, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fault drills after the clean runs (modes that started cleanly only)."""
    drills: dict[str, Any] = {"replay": [], "kill": []}
    for clean in runs:
        if clean.get("error") is not None:
            continue
        if setup.faults.replay > 0 and clean["mode"] != "eager":
            drills["replay"].append(replay_drill(setup, clean))
        if setup.faults.kill_at is not None:
            drills["kill"].append(kill_drill(setup, clean["mode"]))
    return drills


def _run_server(setup: ServeBenchSetup, server: ServerProcess, run: dict[str, Any]) -> None:
    mode, run["error"] = run["mode"], None
    try:
        run["startup_s"], health = server.wait_healthy(setup.startup_timeout)
    except ServerStartError as exc:
        server.kill()
        log.error("serve bench: %s: %s", mode, exc)
        run.update(startup_s=None, error=str(exc), exit_code=server.returncode, log_tail=server.log_tail())
        return
    log.info("serve bench: %s: ready in %.1f s", mode, run["startup_s"])
    run["engine"] = {k: v for k, v in health.items() if k not in ("status", "memory")}
    try:
        _measure(setup, server, health, run)
    except Exception as exc:  # the server died or answered nonsense: record it, stop it, go on
        log.exception("serve bench: %s: the run failed", mode)
        run["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        run["exit_code"], stop_error = server.stop(STOP_TIMEOUT_SECONDS)
    if stop_error or run["error"]:
        run["error"] = run["error"] or stop_error
        run["log_tail"] = server.log_tail()


def run_serve_bench(setup: ServeBenchSetup) -> dict[str, Any]:
    """Every mode, then the table and JSON line on stdout and the JSON and PNG files; the payload."""
    wakeup = measure_wakeup(WAKEUP_PROBES)  # how noisy this machine is, before any server runs
    log.info(
        "serve bench: a sleeping process wakes in %.3f ms (p50), %.3f ms (p99)", wakeup["p50"], wakeup["p99"]
    )
    runs = [bench_mode(setup, mode) for mode in setup.modes]
    drills = run_drills(setup, runs) if setup.faults != ServeFaults() else None
    # the payload reads environment() only now: no CUDA context in this process while servers ran
    payload = serve_payload(setup.settings(), runs, setup.cuda)
    payload["wakeup_ms"] = wakeup  # bench/wakeup.py: the floor under every hop a token takes
    if drills is not None:
        payload["faults"] = drills
        goals = faults_goals(drills)
        payload["goals"] += goals
        payload["ok"] = payload["ok"] and all(goal["met"] for goal in goals)
    print_serve(payload)
    log.info("serve bench: wrote %s", written(*save_serve(payload, setup.out)))
    return payload


def run_bench_serve(args: argparse.Namespace) -> int:
    """Run `graphrun bench serve`; exit status 1 when a server failed or any request failed or was lost."""
    try:
        setup = ServeBenchSetup.from_args(args)
    except ConfigError as exc:
        return refuse("bench serve", exc)
    return 0 if run_serve_bench(setup)["ok"] else 1
