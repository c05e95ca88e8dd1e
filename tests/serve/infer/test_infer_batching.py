"""Dynamic batching under concurrent clients: requests coalesce into shared model calls, and every
client gets its own rows back (verified by content); a full queue is 429; an oversized request is split."""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np
from infer_harness import live_infer_server, served_app
from infer_models import FEATURES, scaled

NUM_CLIENTS = 24


def _body(client: int, rows: int) -> tuple[dict, list[list[float]], list[float]]:
    """Client `client`'s request: rows whose values and scales are its own."""
    x = [[float(client * 100 + row * 10 + col) for col in range(FEATURES)] for row in range(rows)]
    scale = [float(client + 1) * (row + 1) for row in range(rows)]
    body = {
        "inputs": {
            "x": {"dtype": "float32", "data": x},
            "scale": {"dtype": "float32", "data": [[s] for s in scale]},
        }
    }
    return body, x, scale


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


async def _clients(url: str, rows_of: list[int]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as http:
        requests = [http.post(url + "/v1/infer", json=_body(i, rows)[0]) for i, rows in enumerate(rows_of)]
        return await asyncio.gather(*requests)


def test_concurrent_clients_share_model_calls_and_each_gets_its_own_rows():
    rows_of = [1 + i % 3 for i in range(NUM_CLIENTS)]  # 1, 2 or 3 rows each
    with live_infer_server({"module": "infer_models:scale_factory", "max_wait_ms": 50.0}) as srv:
        answers = asyncio.run(_clients(srv.url, rows_of))
        metrics = httpx.get(srv.url + "/metrics").text
    for i, (answer, rows) in enumerate(zip(answers, rows_of, strict=True)):
        assert answer.status_code == 200, answer.text
        _, x, scale = _body(i, rows)
        got = answer.json()["outputs"]
        np.testing.assert_allclose(got["scaled"]["data"], scaled(x, scale), rtol=1e-6)
        np.testing.assert_allclose(got["total"]["data"], [sum(r) for r in scaled(x, scale)], rtol=1e-6)
    calls = _metric(metrics, "graphrun_infer_batch_requests_count")
    assert _metric(metrics, "graphrun_infer_batch_requests_sum") == NUM_CLIENTS
    assert _metric(metrics, "graphrun_infer_batch_rows_sum") == sum(rows_of)
    assert calls < NUM_CLIENTS / 2, (
        f"{calls} model calls for {NUM_CLIENTS} concurrent requests: no coalescing"
    )
    assert _metric(metrics, "graphrun_infer_queue_wait_seconds_count") == NUM_CLIENTS


def test_with_no_wait_every_request_still_gets_its_rows():
    with live_infer_server({"module": "infer_models:scale_factory", "max_wait_ms": 0.0}) as srv:
        answers = asyncio.run(_clients(srv.url, [2] * 8))
    for i, answer in enumerate(answers):
        _, x, scale = _body(i, 2)
        np.testing.assert_allclose(answer.json()["outputs"]["scaled"]["data"], scaled(x, scale), rtol=1e-6)


def test_max_batch_requests_one_runs_one_request_per_model_call():
    infer = {"module": "infer_models:scale_factory", "max_wait_ms": 50.0, "max_batch_requests": 1}
    with live_infer_server(infer) as srv:
        answers = asyncio.run(_clients(srv.url, [2] * 12))
        metrics = httpx.get(srv.url + "/metrics").text
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        _, x, scale = _body(i, 2)
        np.testing.assert_allclose(answer.json()["outputs"]["scaled"]["data"], scaled(x, scale), rtol=1e-6)
    assert _metric(metrics, "graphrun_infer_batch_requests_count") == 12  # 12 calls for 12 requests
    assert _metric(metrics, "graphrun_infer_batch_rows_sum") == 24
    # nothing waited for a batch-mate: each call left at once (the 50 ms wait was never served)
    assert _metric(metrics, 'graphrun_infer_queue_wait_seconds_bucket{le="0.05"}') == 12


def test_max_batch_requests_caps_every_model_call():
    infer = {"module": "infer_models:scale_factory", "max_wait_ms": 50.0, "max_batch_requests": 3}
    with live_infer_server(infer) as srv:
        answers = asyncio.run(_clients(srv.url, [1] * NUM_CLIENTS))
        metrics = httpx.get(srv.url + "/metrics").text
    assert all(answer.status_code == 200 for answer in answers)
    calls = _metric(metrics, "graphrun_infer_batch_requests_count")
    assert _metric(metrics, 'graphrun_infer_batch_requests_bucket{le="2.0"}') < calls  # some coalesced
    assert calls >= NUM_CLIENTS / 3


def test_a_request_above_the_top_rung_runs_alone_in_top_rung_chunks():
    with served_app({"module": "infer_models:scale_factory", "cuda_graph_sizes": (1, 2, 4)}) as http:
        body, x, scale = _body(7, 11)  # 11 rows: chunks of 4, 4 and 3
        answer = http.post("/v1/infer", json=body)
        metrics = http.get("/metrics").text
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["outputs"]["scaled"]["data"], scaled(x, scale), rtol=1e-6)
    assert _metric(metrics, "graphrun_infer_batch_rows_sum") == 11
    eager = re.findall(r'^graphrun_cuda_graph_eager_fallback_total\{.*runner="infer"\} (\S+)$', metrics, re.M)
    assert sum(float(value) for value in eager) == 3  # three model calls, eager (no graphs on a CPU)


def test_sim_graphs_pad_each_batch_to_its_rung_and_slice_it_back():
    infer = {"module": "infer_models:scale_factory", "graph_backend": "sim", "cuda_graph_sizes": (2, 4)}
    with served_app(infer) as http:
        for rows in (1, 3, 4):
            body, x, scale = _body(rows, rows)
            answer = http.post("/v1/infer", json=body)
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(
                answer.json()["outputs"]["scaled"]["data"], scaled(x, scale), rtol=1e-6
            )
        metrics = http.get("/metrics").text
        health = http.get("/health").json()
    assert health["graphs"] == "captured 2/2" and health["graph_backend"] == "sim"
    assert _metric(metrics, 'graphrun_cuda_graph_replayed_total{runner="infer"}') == 3
    # padding: 1 row on rung 2 (0.5), 3 on 4 (0.25), 4 on 4 (0)
    assert _metric(metrics, "graphrun_infer_padding_ratio_sum") == 0.75


async def _flood(url: str, num: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as http:
        body = {"inputs": {"x": {"dtype": "float32", "data": [[1.0, 2.0]]}}}
        return await asyncio.gather(*(http.post(url + "/v1/infer", json=body) for _ in range(num)))


def test_a_full_queue_answers_429_with_retry_after():
    # 2 requests in flight at most; each model call sleeps 0.3 s; 8 arrive at once
    with live_infer_server({"module": "infer_models:slow_factory", "max_wait_ms": 0.0}, max_queue=2) as srv:
        answers = asyncio.run(_flood(srv.url, 8))
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) == {200, 429}, statuses
    for answer in answers:
        if answer.status_code == 429:
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["error"]["code"] == "queue_full"
        else:
            assert answer.json()["outputs"]["output"]["data"] == [[2.0, 3.0]]
