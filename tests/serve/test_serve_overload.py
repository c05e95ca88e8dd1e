"""Admission control: a full queue answers 429 with Retry-After; before start-up everything is 503."""

from __future__ import annotations

import asyncio

import httpx
from fastapi.testclient import TestClient
from serve_harness import live_server

from graphrun.llm.engine_config import EngineConfig
from graphrun.serve.app import build_app
from graphrun.serve.config import ServeConfig
from graphrun.serve.llm_model import llm_client

NUM_REQUESTS = 12


async def _flood(url: str) -> list[httpx.Response]:
    body = {"prompt": "flood", "max_tokens": 150, "ignore_eos": True, "temperature": 0}
    async with httpx.AsyncClient(timeout=60) as http:
        return await asyncio.gather(
            *(http.post(url + "/v1/completions", json=body) for _ in range(NUM_REQUESTS))
        )


def test_a_full_queue_answers_429_with_retry_after():
    # limit: max_num_seqs 2 + max_queue 1 = 3 requests in flight; each runs ~0.5 s, all 12 arrive at once
    with live_server({"max_num_seqs": 2}, max_queue=1) as srv:
        responses = asyncio.run(asyncio.wait_for(_flood(srv.url), timeout=60))
        rejected = [r for r in responses if r.status_code == 429]
        assert {r.status_code for r in responses} == {200, 429}
        assert len(rejected) <= NUM_REQUESTS - 3
        for r in rejected:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "queue_full"
            assert r.json()["error"]["type"] == "rate_limit_error"
        assert all(r.json()["usage"]["completion_tokens"] == 150 for r in responses if r.status_code == 200)
        assert srv.metric("graphrun_requests_total", 'status="overloaded"') == len(rejected)


def test_everything_is_503_until_the_engine_has_started():
    config, engine_config = (
        ServeConfig(retry_after_seconds=2, engine_process=False),
        EngineConfig(model="tiny"),
    )
    client = TestClient(build_app(llm_client(engine_config, config), config, engine_config))
    # no `with`: the lifespan that starts the engine never runs, so the server stays "starting"
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "starting"
    assert health.headers["retry-after"] == "2"
    answer = client.post("/v1/completions", json={"prompt": "hi"})
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "starting" and answer.headers["retry-after"] == "2"
