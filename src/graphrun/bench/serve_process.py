"""`graphrun serve` as a child process for the serving benchmark: start, wait for health, scrape, stop.

The server runs in its own process (the same Python and environment as the benchmark), as it would in
production, so the benchmark measures HTTP, SSE and the engine thread together and start-up is timed
from spawn to the first 200 on /health. Its log goes to a file; the tail is kept when it fails. Stopping
is SIGTERM (the server drains, then exits 0) and the exit status is part of the result.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

HEALTH_POLL_SECONDS = 0.1
LOG_TAIL_LINES = 40
COUNTERS = (  # /metrics samples the benchmark keeps (prefixes)
    "graphrun_cuda_graph_captured",
    "graphrun_cuda_graph_replayed",
    "graphrun_cuda_graph_eager_fallback",
    "graphrun_generation_tokens",
    "graphrun_requests_total",
    "graphrun_infer_batch_requests",  # /v1/infer: requests per model call (bench infer)
)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds process `pid` has used so far (Linux /proc); None where unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name: state (field 3) first
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


MACHINE_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_cpu_seconds() -> dict[str, float] | None:
    """CPU seconds of the whole machine so far, all CPUs together (Linux /proc/stat); None elsewhere.

    busy: user + nice + system + irq + softirq, whoever ran; steal: time a virtual machine's CPUs were
    ready to run but the host ran something else; idle: idle + iowait.
    """
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1 : 1 + len(MACHINE_CPU_FIELDS)]]
    except (OSError, ValueError):
        return None
    if len(values) < len(MACHINE_CPU_FIELDS):
        return None
    t = {name: v / os.sysconf("SC_CLK_TCK") for name, v in zip(MACHINE_CPU_FIELDS, values, strict=True)}
    busy = t["user"] + t["nice"] + t["system"] + t["irq"] + t["softirq"]
    return {"busy": busy, "steal": t["steal"], "idle": t["idle"] + t["iowait"]}


class ServerStartError(RuntimeError):
    """The server exited or stayed unhealthy past the start-up timeout."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it a moment later; a race is unlikely)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One `python -m graphrun serve` child, its log file and its base URL."""

    def __init__(self, argv: list[str], log_path: Path, url: str) -> None:
        self.argv, self.log_path, self.url = argv, log_path, url
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.spawned = time.perf_counter()
        with log_path.open("w") as log_file:  # the child keeps its own handle
            self._proc = subprocess.Popen(
                [sys.executable, *argv], stdout=log_file, stderr=subprocess.STDOUT, env=_server_env()
            )

    @property
    def pid(self) -> int:
        """The server process's id."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process ended, else None."""
        return self._proc.poll()

    def wait_healthy(self, timeout: float) -> tuple[float, dict[str, Any]]:
        """Seconds from spawn to the first 200 on /health, and that /health body."""
        deadline = self.spawned + timeout
        with httpx.Client(timeout=5) as client:
            while time.perf_counter() < deadline:
                if self._proc.poll() is not None:
                    raise ServerStartError(f"the server exited with {self._proc.returncode} during start-up")
                try:
                    response = client.get(self.url + "/health")
                    if response.status_code == 200:
                        return time.perf_counter() - self.spawned, response.json()
                except httpx.HTTPError:
                    pass  # not listening yet
                time.sleep(HEALTH_POLL_SECONDS)
        raise ServerStartError(f"no 200 on /health within {timeout:g} s (--startup-timeout)")

    def get(self, path: str) -> httpx.Response:
        """GET a path of the server."""
        return httpx.get(self.url + path, timeout=30)

    def counters(self) -> dict[str, float]:
        """The /metrics samples named in COUNTERS, keyed `name{label=value,...}`."""
        out = {}
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name.startswith(COUNTERS) and not sample.name.endswith("_created"):
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def stop(self, timeout: float) -> tuple[int, str | None]:
        """SIGTERM, then wait; the exit status, and an error when it had to be killed."""
        if self._proc.poll() is not None:
            return self._proc.returncode, None
        self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(timeout), None
        except subprocess.TimeoutExpired:
            self.kill()
            return self._proc.returncode, f"the server did not exit within {timeout:g} s of SIGTERM; killed"

    def kill(self) -> None:
        """Kill the process (start-up failed or it hung) and reap it."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(30)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(log unreadable: {exc})"


def counter_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """after - before per sample (a sample absent before counts from 0); zero deltas are left out."""
    deltas = {key: value - before.get(key, 0.0) for key, value in after.items()}
    return {key: value for key, value in deltas.items() if value}


def graph_summary(deltas: dict[str, float]) -> dict[str, Any]:
    """Graph replays, eager fallbacks (by reason) and tokens generated in a window of counter deltas."""
    replays = sum(v for k, v in deltas.items() if k.startswith("graphrun_cuda_graph_replayed"))
    fallbacks: dict[str, float] = {}
    for key, value in deltas.items():
        if key.startswith("graphrun_cuda_graph_eager_fallback"):
            reason = key.partition("reason=")[2].split(",")[0].rstrip("}")
            fallbacks[reason] = fallbacks.get(reason, 0.0) + value
    return {
        "graph_replays": replays,
        "graph_eager_fallbacks": fallbacks,
        "generation_tokens": deltas.get("graphrun_generation_tokens_total", 0.0),
    }


def _server_env() -> dict[str, str]:
    """The benchmark's environment for its own loopback servers, less GRAPHRUN_API_KEY: a key meant for
    the operator's server would make these refuse the benchmark's unauthenticated load with 401s."""
    return {name: value for name, value in os.environ.items() if name != "GRAPHRUN_API_KEY"}
