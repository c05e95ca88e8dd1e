"""Tensor-model servers for the /v1/infer tests: in-process (TestClient) or live (uvicorn on a thread)."""

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

from graphrun.serve.config import ServeConfig
from graphrun.serve.infer.app import build_infer_app
from graphrun.serve.infer.client import InferClient
from graphrun.serve.infer.config import InferConfig
from graphrun.serve.infer.model import infer_client

START_TIMEOUT = 300.0


def configs(infer: dict[str, Any], serve: dict[str, Any]) -> tuple[InferConfig, ServeConfig]:
    serve = {"served_model_name": "m", "engine_process": False, **serve}
    return InferConfig(**{"cuda_graph_max_bs": 8, **infer}), ServeConfig(**serve)


@contextlib.contextmanager
def served_app(infer: dict[str, Any], **serve: Any) -> Iterator[TestClient]:
    """The app in process, its model started and ready."""
    infer_config, serve_config = configs(infer, serve)
    client = infer_client(infer_config, serve_config)
    with TestClient(build_infer_app(client, serve_config)) as http:
        assert client.wait_ready(START_TIMEOUT), f"the model did not start: {client.state}"
        yield http


@dataclass
class LiveInfer:
    url: str
    client: InferClient


@contextlib.contextmanager
def live_infer_server(infer: dict[str, Any], **serve: Any) -> Iterator[LiveInfer]:
    """A real server on a free 127.0.0.1 port (concurrent clients need one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    infer_config, serve_config = configs(infer, {"port": port, **serve})
    client = infer_client(infer_config, serve_config)
    app = build_infer_app(client, serve_config)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert client.wait_ready(START_TIMEOUT), f"the model did not start: {client.state}"
        assert httpx.get(url + "/health", timeout=60).status_code == 200
        yield LiveInfer(url, client)
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
