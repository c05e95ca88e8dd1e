"""Tensor-model servers for the /v1/infer tests: in-process (TestClient) or live (uvicorn on a thread)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app_servers import in_process, live_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from graphrun.serve.config import ServeConfig
from graphrun.serve.infer.app import build_infer_app
from graphrun.serve.infer.client import InferClient
from graphrun.serve.infer.config import InferConfig
from graphrun.serve.infer.model import infer_client


def configs(infer: dict[str, Any], serve: dict[str, Any]) -> tuple[InferConfig, ServeConfig]:
    serve = {"served_model_name": "m", "engine_process": False, **serve}
    return InferConfig(**{"cuda_graph_max_bs": 8, **infer}), ServeConfig(**serve)


def _app(infer: dict[str, Any], serve: dict[str, Any]) -> tuple[InferClient, FastAPI]:
    infer_config, serve_config = configs(infer, serve)
    client = infer_client(infer_config, serve_config)
    return client, build_infer_app(client, serve_config)


@contextlib.contextmanager
def served_app(infer: dict[str, Any], **serve: Any) -> Iterator[TestClient]:
    """The app in process, its model started and ready."""
    with in_process(*_app(infer, serve), "model") as http:
        yield http


@dataclass
class LiveInfer:
    url: str
    client: InferClient


@contextlib.contextmanager
def live_infer_server(infer: dict[str, Any], **serve: Any) -> Iterator[LiveInfer]:
    """A real server on a free 127.0.0.1 port (concurrent clients need one)."""
    with live_app(lambda port: _app(infer, {"port": port, **serve}), "model") as (url, client, _):
        yield LiveInfer(url, client)
