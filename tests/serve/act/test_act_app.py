"""/act end to end, in process, on the sim backend: the answer equals Pipeline.act() and the eager
modules, in every encoding; the prefix cache by observation_id; the model card and /health with each
stage's tier; a stage forced to fail its capture at start-up; 400s naming the tensor and the rule; 503
before start-up."""

from __future__ import annotations

import json

import numpy as np
import pytest
from act_harness import LADDER, configs, served_policy
from act_models import TINY, eager_actions, json_body, observation_arrays, reference
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from graphrun.graphs.options import RunnerOptions
from graphrun.pipeline.policy.observation import Observation
from graphrun.serve.act.app import build_act_app
from graphrun.serve.act.model import act_client
from graphrun.serve.infer.codec import decode, npy_b64, safetensors_b64

TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def http():
    with served_policy({}) as client:
        yield client


@pytest.fixture(scope="module")
def twin():
    return reference(LADDER)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def actions_of(answer) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    if "safetensors" in body:
        return decode({"safetensors": body["safetensors"]}).tensors["actions"]
    return decode({"inputs": body["outputs"]}).tensors["actions"]


def test_act_equals_the_pipeline_and_the_eager_modules(http, twin):
    arrays = observation_arrays(2, seed=1)
    served = actions_of(http.post("/act", json=json_body(arrays)))
    assert served.shape == (2, TINY.horizon, TINY.action_dim) and served.dtype == np.float32
    np.testing.assert_allclose(served, eager_actions(twin, arrays), **TOL)
    pipe = twin.pipeline(RunnerOptions(backend="sim", sizes=LADDER), registry=CollectorRegistry())
    obs = Observation(*(twin_tensor(arrays, name) for name in ("images", "tokens", "state")),
                      noise=twin_tensor(arrays, "noise"))  # fmt: skip
    np.testing.assert_allclose(served, pipe.act(obs).numpy(), **TOL)
    pipe.close()


def twin_tensor(arrays: dict[str, np.ndarray], name: str):
    import torch

    return torch.from_numpy(arrays[name])


def test_every_encoding_round_trips(http, twin):
    arrays = observation_arrays(3, seed=2)  # 3 rows: padded to the rung of 4
    want = eager_actions(twin, arrays)
    as_json = http.post("/act", json=json_body(arrays, model="p"))
    assert set(as_json.json()["outputs"]["actions"]) == {"dtype", "shape", "data"}
    as_npy = http.post("/act", json={"inputs": {n: {"npy": npy_b64(a)} for n, a in arrays.items()}})
    assert set(as_npy.json()["outputs"]["actions"]) == {"npy"}
    as_safetensors = http.post("/act", json={"safetensors": safetensors_b64(arrays)})
    assert set(as_safetensors.json()) == {"model", "safetensors"}
    for answer in (as_json, as_npy, as_safetensors):
        np.testing.assert_allclose(actions_of(answer), want, **TOL)


def test_a_repeated_observation_id_takes_the_prefix_from_the_cache(http, twin):
    first, second = observation_arrays(1, seed=3), observation_arrays(1, seed=4)
    before = http.get("/metrics").text
    a = actions_of(http.post("/act", json=json_body(first, observation_id="frame-1")))
    np.testing.assert_allclose(a, eager_actions(twin, first), **TOL)
    # the same id with other images: the prefix is the first observation's (cached), the noise this one's
    b = actions_of(http.post("/act", json=json_body(second, observation_id="frame-1")))
    mixed = {**first, "noise": second["noise"]}
    np.testing.assert_allclose(b, eager_actions(twin, mixed), **TOL)
    assert not np.allclose(b, eager_actions(twin, second))
    after = http.get("/metrics").text
    labels = {"model": "example", "stage": "prefix"}
    for name, grew in (
        ("graphrun_pipeline_cache_hits_total", 1),
        ("graphrun_pipeline_cache_misses_total", 1),
    ):
        assert metric(after, name, **labels) - metric(before, name, **labels) == grew, name


def test_noise_is_optional(http):
    arrays = observation_arrays(1, seed=5)
    del arrays["noise"]
    one, two = (actions_of(http.post("/act", json=json_body(arrays))) for _ in range(2))
    assert one.shape == (1, TINY.horizon, TINY.action_dim) and np.isfinite(one).all()
    assert not np.array_equal(one, two)  # fresh noise per request


def test_models_describes_the_observation_and_the_action(http):
    card = http.get("/v1/models").json()["data"][0]
    assert card["id"] == "p" and card["root"] == "act_models:tiny" and card["endpoint"] == "/act"
    inputs = {spec["name"]: spec for spec in card["inputs"]}
    assert list(inputs) == ["images", "tokens", "state", "noise"]
    assert inputs["tokens"]["dtype"] == "int64" and inputs["tokens"]["range"] == [0, TINY.vocab_size]
    assert (
        inputs["images"]["shape"] == [None, TINY.num_patches, TINY.patch_dim] and inputs["images"]["finite"]
    )
    assert inputs["noise"]["optional"] and not inputs["state"]["optional"]
    assert card["outputs"] == [
        {"name": "actions", "dtype": "float32", "shape": [None, TINY.horizon, TINY.action_dim],
         "dynamic_dims": [0], "axes": {"batch": 0}, "finite": False}
    ]  # fmt: skip
    assert card["rungs"] == list(LADDER) and card["max_rows"] == LADDER[-1]
    assert card["stages"]["prefix"]["tier"] == "graph" and card["stages"]["expert"]["tier"] == "graph"


def test_health_gives_each_stage_its_tier(http):
    health = http.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["stages"] == {
        "prefix": {"tier": "graph", "reason": None, "captured": "3/3"},
        "expert": {"tier": "graph", "reason": None, "captured": "3/3"},
    }
    assert (
        body["graphs"] == "captured 6/6"
        and body["graph_backend"] == "sim"
        and body["policy"] == "act_models:tiny"
    )


def _bad(http, body, code: str, param: str | None) -> None:
    # json.dumps writes NaN as JSON's common extension, which the server reads (httpx's json= refuses it)
    answer = http.post("/act", content=json.dumps(body), headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error


def test_bad_observations_are_400_naming_the_tensor_and_the_rule(http):
    good = observation_arrays(1, seed=6)
    _bad(http, json_body({**good, "depth": good["state"]}), "unknown_name", "depth")
    _bad(http, json_body({k: v for k, v in good.items() if k != "tokens"}), "missing", "tokens")
    _bad(http, json_body({**good, "tokens": good["tokens"].astype(np.float32)}), "dtype", "tokens")
    _bad(http, json_body({**good, "images": good["images"][:, :-1]}), "static_dim", "images")
    _bad(http, json_body({**good, "state": good["state"][0]}), "rank", "state")
    _bad(http, json_body({**good, "state": np.concatenate([good["state"]] * 2)}), "batch", "state")
    too_big = {**good, "tokens": np.full_like(good["tokens"], TINY.vocab_size)}
    _bad(http, json_body(too_big), "range", "tokens")
    _bad(http, json_body({**good, "tokens": -good["tokens"] - 1}), "range", "tokens")
    nan = good["images"].copy()
    nan[0, 0, 0] = np.nan
    _bad(http, json_body({**good, "images": nan}), "nan", "images")
    _bad(http, json_body(observation_arrays(LADDER[-1] + 1, seed=7)), "too_large", "images")
    _bad(http, json_body(good, observation_id=17), "invalid_body", "observation_id")
    _bad(http, json_body(good, observation_id=""), "invalid_body", "observation_id")
    _bad(http, {"inputs": {}}, "invalid_body", None)
    answer = http.post("/act", content=b"{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json"
    assert http.post("/act", json=json_body(good, model="other")).status_code == 404
    assert http.post("/act", content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
    assert http.post("/act", json=json_body(good)).status_code == 200  # still serving


def test_everything_is_503_until_the_policy_has_started():
    act_config, serve_config = configs({}, {"retry_after_seconds": 2})
    http = TestClient(build_act_app(act_client(act_config, serve_config), serve_config))
    # no `with`: the lifespan that starts the policy never runs, so the server stays "starting"
    body = json_body(observation_arrays(1, seed=8))
    for answer in (http.post("/act", json=body), http.get("/v1/models"), http.get("/health")):
        assert answer.status_code == 503 and answer.headers["retry-after"] == "2"
    assert http.post("/act", json=body).json()["error"]["code"] == "starting"


def test_a_stage_that_cannot_capture_runs_eager_and_the_server_is_ready(twin):
    with served_policy({"policy": "act_models:tiny_prefix_fails"}) as http:
        health = http.get("/health")
        assert health.status_code == 200
        stages = health.json()["stages"]
        assert stages["prefix"] == {"tier": "eager", "reason": "memory_budget", "captured": "0/3"}
        assert stages["expert"]["tier"] == "graph"
        arrays = observation_arrays(2, seed=9)
        np.testing.assert_allclose(actions_of(http.post("/act", json=json_body(arrays))),
                                   eager_actions(twin, arrays), **TOL)  # fmt: skip
        text = http.get("/metrics").text
    failed = "graphrun_cuda_graph_capture_failed_at_init_total"
    # counted once per rung, at start-up (the /act calls after it are not capture failures)
    assert metric(text, failed, stage="prefix", model="example", reason="memory_budget") == len(LADDER)
    assert metric(text, failed, stage="expert", model="example") == 0
    tier = "graphrun_pipeline_stage_tier"
    assert (
        metric(text, tier, stage="prefix", tier="eager") == 1
        and metric(text, tier, stage="expert", tier="graph") == 1
    )


def test_a_factory_that_returns_no_policy_source_fails_start_up():
    act_config, serve_config = configs({"policy": "act_models:not_a_source"}, {})
    client = act_client(act_config, serve_config)
    with TestClient(build_act_app(client, serve_config)) as http:
        assert not client.wait_ready(60) and client.state == "failed"
        assert http.get("/health").status_code == 503


def test_an_observation_id_sent_again_with_other_rows_runs_the_prefix_again(http, twin):
    two, one = observation_arrays(2, seed=10), observation_arrays(1, seed=11)
    actions_of(http.post("/act", json=json_body(two, observation_id="robot-7")))
    answer = http.post("/act", json=json_body(one, observation_id="robot-7"))
    np.testing.assert_allclose(actions_of(answer), eager_actions(twin, one), **TOL)


def test_enforce_eager_serves_every_stage_eager_and_no_capture_failed(twin):
    with served_policy({"enforce_eager": True}) as http:
        stages = http.get("/health").json()["stages"]
        assert {s: (v["tier"], v["reason"]) for s, v in stages.items()} == {
            "prefix": ("eager", "mode_none"),
            "expert": ("eager", "mode_none"),
        }
        arrays = observation_arrays(1, seed=12)
        np.testing.assert_allclose(actions_of(http.post("/act", json=json_body(arrays))),
                                   eager_actions(twin, arrays), **TOL)  # fmt: skip
        text = http.get("/metrics").text
    assert metric(text, "graphrun_cuda_graph_capture_failed_at_init_total", stage="prefix") == 0
