"""/v1/infer on a GPU: CUDA graphs captured per rung, concurrent requests coalesced into replays, each
client's rows exact (run with scripts/gpu-check tests, or pytest -m gpu)."""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np
import pytest
from infer_harness import live_infer_server
from infer_models import FEATURES, scaled

pytestmark = pytest.mark.gpu


def _body(client: int) -> tuple[dict, list[list[float]], list[float]]:
    x = [[float(client * 10 + col) for col in range(FEATURES)], [float(-client)] * FEATURES]
    scale = [float(client + 1), 0.5]
    inputs = {
        "x": {"dtype": "float32", "data": x},
        "scale": {"dtype": "float32", "data": [[s] for s in scale]},
    }
    return {"inputs": inputs}, x, scale


async def _clients(url: str, num: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as http:
        return await asyncio.gather(*(http.post(url + "/v1/infer", json=_body(i)[0]) for i in range(num)))


def test_concurrent_requests_replay_cuda_graphs_and_get_their_own_rows():
    infer = {"module": "infer_models:scale_cuda_factory", "graph_backend": "cuda", "max_wait_ms": 5.0}
    with live_infer_server(infer) as srv:
        health = httpx.get(srv.url + "/health").json()
        answers = asyncio.run(_clients(srv.url, 32))
        metrics = httpx.get(srv.url + "/metrics").text
    assert health["graphs"] == "captured 4/4", health  # rungs 1, 2, 4, 8
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        _, x, scale = _body(i)
        np.testing.assert_allclose(answer.json()["outputs"]["scaled"]["data"], scaled(x, scale), rtol=1e-5)
    replays = re.search(r'^graphrun_cuda_graph_replayed_total\{runner="infer"\} (\S+)$', metrics, re.M)
    assert replays is not None and 8 <= float(replays.group(1)) < 32  # 64 rows on a top rung of 8: coalesced
