"""`graphrun bench infer`: POST /v1/infer under a closed-loop load, graph vs eager, batching on vs off.

Dynamic batching pays where a request alone leaves the device idle: many small requests, each of which
would be one small model call. So the benchmark serves one model (bench/infer_models.py, or any
`pkg.mod:factory`) four ways, each a `graphrun serve --module` child process (serve_process.py): graphs or
`--enforce-eager`, times batching on (the server's default) or off (`--max-batch-requests 1`, one request
per model call). On each server it runs every concurrency in turn: untimed warm-up requests, then the
timed closed loop (infer_load.py), and reads the server's counters around it (model calls, requests a
call, graph replays, fallbacks). Failed requests are counted and listed, never dropped. Without CUDA the
graph servers use the sim backend: a smoke test of the whole path whose timings mean nothing.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from graphrun.bench.infer_load import (
    ENCODINGS,
    ServedCard,
    default_client_processes,
    plan_bodies,
    run_load,
)
from graphrun.bench.infer_models import SERVED
from graphrun.bench.infer_report import (
    MAX_ERRORS_LISTED,
    infer_payload,
    print_infer,
    run_name,
    save_infer,
    summarize_point,
)
from graphrun.bench.report import written
from graphrun.bench.serve_process import ServerProcess, ServerStartError, counter_deltas, free_port
from graphrun.errors import ConfigError
from graphrun.refuse import refuse

log = logging.getLogger(__name__)
MODES = ("graph", "eager")
BATCHING = ("on", "off")
FACTORIES = "graphrun.bench.infer_models"
STOP_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class InferBenchSetup:
    """What `bench infer` runs, fixed once from the flags and validated here."""

    model: str  # a factory of bench/infer_models.py (SERVED) or pkg.mod:factory
    modes: tuple[str, ...]
    batching: tuple[str, ...]
    concurrency: tuple[int, ...]
    num_requests: int
    warmup_requests: int
    rows: int
    encoding: str
    out: Path
    cuda: bool
    seed: int = 0
    max_batch_size: int = 32  # the server's --cuda-graph-max-bs: the top rung
    batch_wait_ms: float | None = None  # None: the server's default
    port: int = 0
    startup_timeout: float = 600.0
    request_timeout: float = 60.0
    client_processes: int | None = None  # None: infer_load.default_client_processes per concurrency
    server_args: tuple[str, ...] = ()
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if ":" not in self.model and self.model not in SERVED:
            raise ConfigError(f"--model takes one of {list(SERVED)} or pkg.mod:factory, got {self.model!r}")
        for flag, values, allowed in (
            ("--modes", self.modes, MODES),
            ("--batching", self.batching, BATCHING),
        ):
            if not values or set(values) - set(allowed) or len(set(values)) != len(values):
                raise ConfigError(f"{flag} takes distinct values from {list(allowed)}, got {list(values)}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError(f"--concurrency takes positive counts, got {list(self.concurrency)}")
        for flag, value, least in (("--num-requests", self.num_requests, 1), ("--rows", self.rows, 1),
                                   ("--warmup-requests", self.warmup_requests, 0),
                                   ("--cuda-graph-max-bs", self.max_batch_size, 1)):  # fmt: skip
            if value < least:
                raise ConfigError(f"{flag} must be >= {least}, got {value}")
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"--encoding takes one of {list(ENCODINGS)}, got {self.encoding!r}")
        if self.client_processes is not None and self.client_processes < 1:
            raise ConfigError(f"--client-processes must be >= 1, got {self.client_processes}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in [0, 65535] (0: pick a free one), got {self.port}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InferBenchSetup:
        """The flags; --model defaults to the MLP with CUDA, else its small form."""
        cuda = torch.cuda.is_available()  # no CUDA context here: the servers own the GPU
        return cls(
            model=args.model or ("mlp" if cuda else "mlp_small"),
            modes=_items(args.modes),
            batching=_items(args.batching),
            concurrency=_counts(args.concurrency),
            num_requests=args.num_requests,
            warmup_requests=args.warmup_requests,
            rows=args.rows,
            encoding=args.encoding,
            out=Path(args.out),
            cuda=cuda,
            seed=args.seed,
            max_batch_size=args.cuda_graph_max_bs,
            batch_wait_ms=args.batch_wait_ms,
            port=args.port,
            startup_timeout=args.startup_timeout,
            request_timeout=args.request_timeout,
            client_processes=getattr(args, "client_processes", None),
            server_args=tuple(part for arg in args.server_arg or () for part in shlex.split(arg)),
            log_level=args.log_level,
        )

    @property
    def module(self) -> str:
        """The server's --module value."""
        return self.model if ":" in self.model else f"{FACTORIES}:{self.model}"

    def processes_for(self, concurrency: int) -> int:
        """Client processes at one concurrency: the flag's count (at most one per worker), or the default."""
        if self.client_processes is None:
            return default_client_processes(concurrency)
        return min(self.client_processes, concurrency)

    def server_argv(self, mode: str, batching: bool, port: int) -> list[str]:
        """Arguments after the Python executable for one server."""
        argv = ["-m", "graphrun", "--log-level", self.log_level, "serve", "--module", self.module]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--cuda-graph-max-bs", str(self.max_batch_size)]
        if mode == "eager":
            argv.append("--enforce-eager")
        elif not self.cuda:
            argv += ["--graph-backend", "sim"]  # the graph path, simulated on the CPU
        if not batching:
            argv += ["--max-batch-requests", "1"]
        if self.batch_wait_ms is not None:
            argv += ["--batch-wait-ms", str(self.batch_wait_ms)]
        return argv + list(self.server_args)

    def settings(self) -> dict[str, Any]:
        """The settings as the payload records them."""
        settings = asdict(self)
        settings.update(module=self.module, out=str(self.out), concurrency=list(self.concurrency))
        return settings


def _items(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in _items(text))
    except ValueError:
        raise ConfigError(f"--concurrency takes comma-separated counts (1,8,32), got {text!r}") from None


def bench_server(setup: InferBenchSetup, mode: str, batching: bool) -> dict[str, Any]:
    """One server end to end: start it, run every concurrency, stop it; a failure is recorded, not raised."""
    name, port = run_name(mode, batching), setup.port or free_port()
    argv = setup.server_argv(mode, batching, port)
    log_path = setup.out / f"infer-{name}.log"
    run: dict[str, Any] = {"name": name, "mode": mode, "batching": batching, "error": None, "points": []}
    run.update(command=[sys.executable, *argv], log=str(log_path))
    log.info("infer bench: %s: starting the server on port %d (log: %s)", name, port, log_path)
    server = ServerProcess(argv, log_path, f"http://127.0.0.1:{port}")
    try:
        _run_server(setup, server, run)
    finally:
        server.kill()  # a no-op once it exited; Ctrl-C or a bug here never leaves a server behind
    log.info("infer bench: %s: server exited with %s", name, run["exit_code"])
    return run


def _run_server(setup: InferBenchSetup, server: ServerProcess, run: dict[str, Any]) -> None:
    try:
        run["startup_s"], health = server.wait_healthy(setup.startup_timeout)
    except ServerStartError as exc:
        log.error("infer bench: %s: %s", run["name"], exc)
        server.kill()
        run.update(startup_s=None, error=str(exc), exit_code=server.returncode, log_tail=server.log_tail())
        return
    run["engine"] = {k: v for k, v in health.items() if k not in ("status", "memory")}
    try:
        card = ServedCard.from_models(server.get("/v1/models").json())
        run["rungs"] = list(card.rungs)
        for concurrency in setup.concurrency:
            run["points"].append(_measure(setup, server, card, concurrency, run["name"]))
    except Exception as exc:  # the server died or answered nonsense: record it, stop it, go on
        log.exception("infer bench: %s: the run failed", run["name"])
        run["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        run["exit_code"], stop_error = server.stop(STOP_TIMEOUT_SECONDS)
    if stop_error or run["error"]:
        run["error"] = run["error"] or stop_error
        run["log_tail"] = server.log_tail()


def _measure(
    setup: InferBenchSetup, server: ServerProcess, card: ServedCard, concurrency: int, name: str
) -> dict[str, Any]:
    """Warm-up, then the timed closed loop at one concurrency, with the server's counters around it."""
    seed = setup.seed * 1_000_003 + concurrency  # each point its own bodies, the same on every server
    warmup = plan_bodies(card.inputs, setup.rows, setup.warmup_requests, seed + 500_000, setup.encoding)
    timed = plan_bodies(card.inputs, setup.rows, setup.num_requests, seed, setup.encoding)
    processes = setup.processes_for(concurrency)
    log.info(
        "infer bench: %s: %d timed requests, concurrency %d, %d client processes",
        name, len(timed), concurrency, processes,
    )  # fmt: skip
    before: dict[str, float] = {}
    load = run_load(
        server.url, warmup, timed, card, setup.rows, concurrency, setup.request_timeout, processes,
        on_start=lambda: before.update(server.counters()),  # after the warm-up, before the clock
    )  # fmt: skip
    point = summarize_point(concurrency, setup.rows, load, counter_deltas(before, server.counters()))
    warm_failed = [o for o in load.warmup if not o.ok]
    point["num_warmup_failed"] = len(warm_failed)
    point["warmup_errors"] = [f"warm-up {o.index}: {o.error}" for o in warm_failed[:MAX_ERRORS_LISTED]]
    log.info(
        "infer bench: %s: concurrency %d: %.1f req/s, p50 %.2f ms, %d failed",
        name, concurrency, point["requests_per_s"] or 0.0, point["latency_ms"]["p50"] or 0.0,
        point["num_failed"],
    )  # fmt: skip
    return point


def run_infer_bench(setup: InferBenchSetup) -> dict[str, Any]:
    """Every server, then the table and JSON line on stdout and the JSON and PNG files; the payload."""
    runs = [bench_server(setup, m, b == "on") for m in setup.modes for b in setup.batching]
    # the payload reads environment() only now: no CUDA context in this process while servers ran
    payload = infer_payload(setup.settings(), runs, setup.cuda)
    print_infer(payload)
    log.info("infer bench: wrote %s", written(*save_infer(payload, setup.out)))
    return payload


def run_bench_infer(args: argparse.Namespace) -> int:
    """Run `graphrun bench infer`; exit status 1 when a server failed or any request failed."""
    try:
        setup = InferBenchSetup.from_args(args)
    except ConfigError as exc:
        return refuse("bench infer", exc)
    return 0 if run_infer_bench(setup)["ok"] else 1
