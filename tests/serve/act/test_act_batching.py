"""Concurrent /act calls on a live server: they share act() calls (batched per stage, padded to the
rungs), and each client gets its own action chunk back, checked by content against the eager modules;
requests with and without observation ids share a batch, each keeping its own cache entry; a full queue
is 429."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
from act_harness import LADDER, live_policy_server
from act_models import eager_actions, json_body, observation_arrays, reference
from test_act_app import TOL, actions_of, metric


async def _post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as http:
        return await asyncio.gather(*(http.post(url + "/act", json=body) for body in bodies))


def test_concurrent_clients_share_calls_and_each_gets_its_own_actions():
    twin = reference(LADDER)
    observations = [observation_arrays(1 + i % 2, seed=100 + i) for i in range(10)]
    with live_policy_server({"max_wait_ms": 100.0}) as srv:
        answers = asyncio.run(_post_all(srv.url, [json_body(arrays) for arrays in observations]))
        text = httpx.get(srv.url + "/metrics").text
    for arrays, answer in zip(observations, answers, strict=True):
        np.testing.assert_allclose(actions_of(answer), eager_actions(twin, arrays), **TOL)
    calls = metric(text, "graphrun_act_batch_requests_count")
    assert metric(text, "graphrun_act_batch_requests_sum") == 10 and calls < 10, calls  # coalesced
    assert metric(text, "graphrun_act_batch_rows_sum") == 15
    # every call ran each stage's graphs: no batch went past the top rung
    assert metric(text, "graphrun_pipeline_acts_total") == calls
    assert metric(text, "graphrun_cuda_graph_replayed_total", stage="prefix") == calls


def test_a_batch_mixes_cache_hits_misses_and_requests_without_an_id():
    twin = reference(LADDER)
    seen, fresh, anonymous = (observation_arrays(1, seed=s) for s in (200, 201, 202))
    with live_policy_server({"max_wait_ms": 200.0}) as srv:
        [first] = asyncio.run(_post_all(srv.url, [json_body(seen, observation_id="seen")]))
        again = {**observation_arrays(1, seed=203), "noise": seen["noise"]}  # other images, same id
        bodies = [
            json_body(again, observation_id="seen"),
            json_body(fresh, observation_id="fresh"),
            json_body(anonymous),
        ]
        answers = asyncio.run(_post_all(srv.url, bodies))
        text = httpx.get(srv.url + "/metrics").text
    np.testing.assert_allclose(actions_of(first), eager_actions(twin, seen), **TOL)
    np.testing.assert_allclose(actions_of(answers[0]), actions_of(first), **TOL)  # the cached prefix
    np.testing.assert_allclose(actions_of(answers[1]), eager_actions(twin, fresh), **TOL)
    np.testing.assert_allclose(actions_of(answers[2]), eager_actions(twin, anonymous), **TOL)
    assert metric(text, "graphrun_act_batch_requests_count") == 2  # the first alone, then the three together
    labels = {"model": "example", "stage": "prefix"}
    assert metric(text, "graphrun_pipeline_cache_hits_total", **labels) == 1
    assert metric(text, "graphrun_pipeline_cache_misses_total", **labels) == 2
    assert metric(text, "graphrun_pipeline_cache_entries", **labels) == 2


def test_a_full_queue_answers_429_with_retry_after():
    # 2 requests in flight at most; each act() takes 0.3 s more; 8 arrive at once
    body = json_body(observation_arrays(1, seed=300))
    with live_policy_server({"policy": "act_models:slow", "max_wait_ms": 0.0}, max_queue=2) as srv:
        answers = asyncio.run(_post_all(srv.url, [body] * 8))
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) == {200, 429}, statuses
    for answer in answers:
        if answer.status_code == 429:
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["error"]["code"] == "queue_full"
