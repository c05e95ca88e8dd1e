"""Policy servers for the /act tests: in-process (TestClient) or live (uvicorn on a thread)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app_servers import in_process, live_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from graphrun.serve.act.app import build_act_app
from graphrun.serve.act.client import ActClient
from graphrun.serve.act.config import ActConfig
from graphrun.serve.act.model import act_client
from graphrun.serve.config import ServeConfig

LADDER = (1, 2, 4)


def configs(act: dict[str, Any], serve: dict[str, Any]) -> tuple[ActConfig, ServeConfig]:
    serve = {"served_model_name": "p", "engine_process": False, **serve}
    act = {"policy": "act_models:tiny", "graph_backend": "sim", "cuda_graph_sizes": LADDER, **act}
    return ActConfig(**act), ServeConfig(**serve)


def _app(act: dict[str, Any], serve: dict[str, Any]) -> tuple[ActClient, FastAPI]:
    act_config, serve_config = configs(act, serve)
    client = act_client(act_config, serve_config)
    return client, build_act_app(client, serve_config)


@contextlib.contextmanager
def served_policy(act: dict[str, Any], **serve: Any) -> Iterator[TestClient]:
    """The app in process, its policy started and ready."""
    with in_process(*_app(act, serve), "policy") as http:
        yield http


@dataclass
class LiveAct:
    url: str
    client: ActClient


@contextlib.contextmanager
def live_policy_server(act: dict[str, Any], **serve: Any) -> Iterator[LiveAct]:
    """A real server on a free 127.0.0.1 port (concurrent clients need one)."""
    with live_app(lambda port: _app(act, {"port": port, **serve}), "policy") as (url, client, _):
        yield LiveAct(url, client)
