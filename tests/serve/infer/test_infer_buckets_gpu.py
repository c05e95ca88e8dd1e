"""/v1/infer in batch x length buckets on a GPU: CUDA graphs per bucket, concurrent clients of different
lengths coalesced, each answer equal to the model run eagerly on that request alone (pytest -m gpu)."""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np
import pytest
import torch
from infer_harness import live_infer_server
from infer_models import VOCAB, TinyEncoder

pytestmark = pytest.mark.gpu


def _request(seed: int, rows: int, length: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1, VOCAB, (rows, length), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def _body(tensors: dict[str, np.ndarray]) -> dict:
    return {"inputs": {name: {"dtype": "int64", "data": a.tolist()} for name, a in tensors.items()}}


async def _clients(url: str, requests: list[dict[str, np.ndarray]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as http:
        return await asyncio.gather(*(http.post(url + "/v1/infer", json=_body(r)) for r in requests))


def test_concurrent_clients_of_different_lengths_replay_cuda_graphs_and_match_eager():
    infer = {"module": "infer_models:encoder_cuda_factory", "graph_backend": "cuda", "max_wait_ms": 5.0}
    requests = [_request(i, 1 + i % 3, 1 + (7 * i) % 16) for i in range(32)]
    model = TinyEncoder().cuda().eval()
    with live_infer_server(infer) as srv:
        health = httpx.get(srv.url + "/health").json()
        answers = asyncio.run(_clients(srv.url, requests))
        metrics = httpx.get(srv.url + "/metrics").text
    assert health["graphs"] == "captured 12/12", health  # lengths 4, 8, 16 x batch rungs 1, 2, 4, 8
    for answer, tensors in zip(answers, requests, strict=True):
        assert answer.status_code == 200, answer.text
        with torch.no_grad():
            want = model(**{name: torch.from_numpy(a).cuda() for name, a in tensors.items()})
        got = answer.json()["outputs"]
        for name, tensor in want.items():
            np.testing.assert_allclose(got[name]["data"], tensor.cpu().numpy(), rtol=1e-4, atol=1e-4)
    replays = re.findall(
        r'^graphrun_cuda_graph_replayed_total\{runner="infer-length\d+"\} (\S+)$', metrics, re.M
    )
    calls = re.search(r"^graphrun_infer_batch_requests_count (\S+)$", metrics, re.M)
    assert calls is not None and float(calls.group(1)) < 32  # coalesced
    assert sum(float(v) for v in replays) >= float(calls.group(1))  # verification's replays count too
