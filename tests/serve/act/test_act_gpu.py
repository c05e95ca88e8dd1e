"""/act on a GPU: the example policy (full size) served with CUDA graphs for both stages, in process;
single and concurrent /act calls equal the eager modules within the half-precision tolerance, and the
graphs replayed (run with pytest -m gpu tests/serve/act)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
import numpy as np
import pytest
import torch
from act_harness import live_policy_server, served_policy
from act_models import json_body, observation_arrays
from test_act_app import actions_of, metric

from graphrun.graphs.verify import mismatch
from graphrun.pipeline.policy.config import ExamplePolicyConfig
from graphrun.pipeline.policy.example import ExamplePolicy
from graphrun.pipeline.policy.observation import Observation

pytestmark = pytest.mark.gpu

LADDER = (1, 2, 4, 8)  # the served default (--cuda-graph-max-bs 8)
CONFIG = ExamplePolicyConfig()
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _served(dtype: str) -> dict:
    return {
        "policy": "example",
        "graph_backend": "cuda",
        "device": "cuda",
        "dtype": dtype,
        "cuda_graph_sizes": (),
    }


@pytest.fixture(scope="module", params=list(DTYPES))
def dtype(request):
    return request.param


@pytest.fixture(scope="module")
def twin(dtype):
    return ExamplePolicy(replace(CONFIG, batch_sizes=LADDER), device="cuda", dtype=DTYPES[dtype])


def _eager(policy: ExamplePolicy, arrays: dict[str, np.ndarray]) -> torch.Tensor:
    def on_device(name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(arrays[name]).to("cuda", dtype)

    obs = Observation(on_device("images", policy.dtype), on_device("tokens", torch.int64),
                      on_device("state", policy.dtype), noise=on_device("noise", policy.dtype))  # fmt: skip
    return policy.act_eager(obs)


def _check(policy: ExamplePolicy, answer, arrays: dict[str, np.ndarray]) -> None:
    got = torch.from_numpy(actions_of(answer)).to("cuda", policy.dtype)  # served in float32, exactly
    assert mismatch(got, _eager(policy, arrays)) is None, mismatch(got, _eager(policy, arrays))


def test_act_on_cuda_graphs_equals_eager(dtype, twin):
    with served_policy(_served(dtype)) as http:
        health = http.get("/health").json()
        assert health["graph_backend"] == "cuda" and health["dtype"] == dtype
        assert {s: v["tier"] for s, v in health["stages"].items()} == {"prefix": "graph", "expert": "graph"}
        for rows in (1, 3, 8):  # 3 padded to the rung of 4
            arrays = observation_arrays(rows, seed=rows, config=CONFIG)
            _check(twin, http.post("/act", json=json_body(arrays)), arrays)
        cached = observation_arrays(1, seed=20, config=CONFIG)
        for _ in range(2):  # the second takes the prefix from the cache
            _check(twin, http.post("/act", json=json_body(cached, observation_id="frame")), cached)
        text = http.get("/metrics").text
    assert metric(text, "graphrun_pipeline_cache_hits_total", stage="prefix") == 1
    assert metric(text, "graphrun_cuda_graph_replayed_total", stage="expert") == 5 * CONFIG.num_steps
    assert metric(text, "graphrun_cuda_graph_eager_fallback_total", stage="expert") == 0


async def _post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as http:
        return await asyncio.gather(*(http.post(url + "/act", json=body) for body in bodies))


def test_concurrent_act_calls_on_cuda_get_their_own_actions(dtype, twin):
    observations = [observation_arrays(1, seed=100 + i, config=CONFIG) for i in range(12)]
    with live_policy_server({**_served(dtype), "max_wait_ms": 20.0}) as srv:
        answers = asyncio.run(_post_all(srv.url, [json_body(arrays) for arrays in observations]))
        text = httpx.get(srv.url + "/metrics").text
    for arrays, answer in zip(observations, answers, strict=True):
        _check(twin, answer, arrays)
    assert metric(text, "graphrun_act_batch_requests_count") < 12  # coalesced into fewer act() calls
