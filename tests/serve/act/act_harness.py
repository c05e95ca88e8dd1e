"""Policy servers for the /act tests: in-process (TestClient) or live (uvicorn on a thread)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi.testclient import TestClient

from graphrun.serve.act.app import build_act_app
from graphrun.serve.act.client import ActClient
from graphrun.serve.act.config import ActConfig
from graphrun.serve.act.model import act_client
from graphrun.serve.config import ServeConfig

START_TIMEOUT = 300.0
LADDER = (1, 2, 4)


def configs(act: dict[str, Any], serve: dict[str, Any]) -> tuple[ActConfig, ServeConfig]:
    serve = {"served_model_name": "p", "engine_process": False, **serve}
    act = {"policy": "act_models:tiny", "graph_backend": "sim", "cuda_graph_sizes": LADDER, **act}
    return ActConfig(**act), ServeConfig(**serve)


@contextlib.contextmanager
def served_policy(act: dict[str, Any], **serve: Any) -> Iterator[TestClient]:
    """The app in process, its policy started and ready."""
    act_config, serve_config = configs(act, serve)
    client = act_client(act_config, serve_config)
    with TestClient(build_act_app(client, serve_config)) as http:
        assert client.wait_ready(START_TIMEOUT), f"the policy did not start: {client.state}"
        yield http


@dataclass
class LiveAct:
    url: str
    client: ActClient


@contextlib.contextmanager
def live_policy_server(act: dict[str, Any], **serve: Any) -> Iterator[LiveAct]:
    """A real server on a free 127.0.0.1 port (concurrent clients need one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    act_config, serve_config = configs(act, {"port": port, **serve})
    client = act_client(act_config, serve_config)
    server = uvicorn.Server(uvicorn.Config(build_act_app(client, serve_config), log_config=None,
                                           timeout_graceful_shutdown=2))  # fmt: skip
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert client.wait_ready(START_TIMEOUT), f"the policy did not start: {client.state}"
        assert httpx.get(url + "/health", timeout=60).status_code == 200
        yield LiveAct(url, client)
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
