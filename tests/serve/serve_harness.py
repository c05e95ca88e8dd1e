"""Live servers for the serve tests: uvicorn in a background thread on a free 127.0.0.1 port
(app_servers.py).

Every wait is for an event and bounded; the bounds are generous (a busy 2-core machine takes
far longer than a quiet one) and only a broken server reaches them, so they never lengthen a passing run.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from app_servers import live_app
from fastapi import FastAPI

from graphrun.llm.engine_config import EngineConfig
from graphrun.serve.app import build_app
from graphrun.serve.config import ServeConfig
from graphrun.serve.llm_client import LLMClient
from graphrun.serve.llm_model import llm_client

MIB = 2**20
ENGINE_DEFAULTS: dict[str, Any] = {
    "model": "tiny",
    "max_num_seqs": 8,
    "max_model_len": 256,
    "device": "cpu",
    "graph_backend": "sim",  # decode through the graph simulator: /health waits for a real capture
    "cpu_kv_cache_bytes": 16 * MIB,
}


@dataclass
class LiveServer:
    """A running server and the objects behind it."""

    url: str
    worker: LLMClient
    server: uvicorn.Server

    def metrics(self) -> str:
        """The /metrics text."""
        return httpx.get(self.url + "/metrics", timeout=60).text

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, e.g. metric("graphrun_requests_total", 'status="ok"')."""
        selector = re.escape(name + (f"{{{labels}}}" if labels else ""))
        match = re.search(rf"^{selector} (\S+)$", self.metrics(), re.MULTILINE)
        assert match is not None, f"no sample {name}{{{labels}}} in /metrics"
        return float(match.group(1))


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll predicate until it is true or timeout seconds pass; True when it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if predicate():
                return True
        time.sleep(interval)
    return False


@contextlib.contextmanager
def live_server(
    engine: dict[str, Any] | None = None, engine_process: bool = False, **serve: Any
) -> Iterator[LiveServer]:
    """Start a server for a tiny engine (ENGINE_DEFAULTS updated by `engine`); stop it afterwards.

    The engine runs in a thread unless engine_process (a spawned process costs seconds to start).
    """

    def start(port: int) -> tuple[LLMClient, FastAPI]:
        config = ServeConfig(port=port, served_model_name="tiny", engine_process=engine_process, **serve)
        engine_config = EngineConfig(**{**ENGINE_DEFAULTS, **(engine or {})})
        worker = llm_client(engine_config, config)
        return worker, build_app(worker, config, engine_config)

    with live_app(start, "engine") as (url, worker, server):
        yield LiveServer(url, worker, server)


def stream_chunks(srv: LiveServer, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks of a streamed request to a live server, parsed; asserts the stream ends with [DONE]."""
    with httpx.stream("POST", srv.url + path, json={**body, "stream": True}, timeout=30) as response:
        assert response.status_code == 200, response.read()
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]
