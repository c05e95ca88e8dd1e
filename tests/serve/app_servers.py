"""An app under test, served: in process (TestClient) or live (uvicorn on a thread on a free port), its
engine host's client started and ready. The LLM's, /v1/infer's and /act's harnesses build the app.

The live server's socket is bound before uvicorn starts (port 0, handed over with `sockets=`), so there is
no race for the port.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from graphrun.serve.host.client import EngineClient

START_TIMEOUT = 300.0  # the bound on a model's start-up (a spawned process imports torch and captures)
C = TypeVar("C", bound=EngineClient[Any, Any])


@contextlib.contextmanager
def in_process(client: EngineClient[Any, Any], app: FastAPI, what: str) -> Iterator[TestClient]:
    """`app` in process, `client` (its engine host's) started and ready; `what` names the model."""
    with TestClient(app) as http:
        assert client.wait_ready(START_TIMEOUT), f"the {what} did not start: {client.state}"
        yield http


@contextlib.contextmanager
def live_app(start: Callable[[int], tuple[C, FastAPI]], what: str) -> Iterator[tuple[str, C, uvicorn.Server]]:
    """The client and app start(port) builds, served on a free 127.0.0.1 port until the block ends; its
    URL, client and server once /health answers 200. `what` names the model in a failed start."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    client, app = start(port)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert client.wait_ready(START_TIMEOUT), f"the {what} did not start: {client.state}"
        assert httpx.get(url + "/health", timeout=60).status_code == 200
        yield url, client, server
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
