"""/v1/infer end to end, in process: a module factory and a torch.export archive, every encoding, the
model card, and the error answers (400 naming the tensor and rule, 404, 415, 503 before start-up)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from infer_harness import configs, served_app
from infer_models import FEATURES, export_scale, scaled

from graphrun.serve.infer.app import build_infer_app
from graphrun.serve.infer.codec import npy_b64, safetensors_b64
from graphrun.serve.infer.model import infer_client

X = [[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, -1.0, 2.0], [9.0, 8.0, 7.0, 6.0]]
SCALE = [2.0, -1.0, 0.5]


def _json_body(x=X, scale=SCALE) -> dict:
    return {
        "inputs": {
            "x": {"dtype": "float32", "data": x},
            "scale": {"dtype": "float32", "data": [[s] for s in scale]},
        }
    }


def _check_scale_answer(outputs: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(outputs["scaled"], scaled(X, SCALE), rtol=1e-6)
    np.testing.assert_allclose(outputs["total"], [sum(row) for row in scaled(X, SCALE)], rtol=1e-6)


@pytest.fixture(scope="module")
def factory_server():
    with served_app({"module": "infer_models:scale_factory"}) as http:
        yield http


def test_json_in_json_out_for_a_module_factory(factory_server):
    answer = factory_server.post("/v1/infer", json=_json_body())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "m"
    assert body["outputs"]["scaled"]["dtype"] == "float32" and body["outputs"]["scaled"]["shape"] == [3, 4]
    assert body["outputs"]["total"]["shape"] == [3]
    _check_scale_answer({name: np.array(t["data"]) for name, t in body["outputs"].items()})


def test_npy_in_npy_out(factory_server):
    x, scale = np.array(X, np.float32), np.array(SCALE, np.float32)[:, None]
    body = {"inputs": {"x": {"npy": npy_b64(x)}, "scale": {"npy": npy_b64(scale)}}}
    answer = factory_server.post("/v1/infer", json=body)
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    assert set(outputs["scaled"]) == {"npy"}
    from graphrun.serve.infer.codec import decode

    _check_scale_answer(decode({"inputs": outputs}).tensors)


def test_safetensors_in_safetensors_out(factory_server):
    tensors = {"x": np.array(X, np.float32), "scale": np.array(SCALE, np.float32)[:, None]}
    answer = factory_server.post("/v1/infer", json={"safetensors": safetensors_b64(tensors), "model": "m"})
    assert answer.status_code == 200, answer.text
    from graphrun.serve.infer.codec import decode

    body = answer.json()
    assert set(body) == {"model", "safetensors"}
    _check_scale_answer(decode({"safetensors": body["safetensors"]}).tensors)


def test_models_describes_inputs_outputs_and_rungs(factory_server):
    card = factory_server.get("/v1/models").json()["data"][0]
    assert card["id"] == "m" and card["root"] == "infer_models:scale_factory"
    x, scale = card["inputs"]
    assert x == {
        "name": "x",
        "dtype": "float32",
        "shape": [None, FEATURES],
        "dynamic_dims": [0],
        "axes": {"batch": 0},
        "finite": False,
    }
    assert scale["name"] == "scale" and scale["shape"] == [None, 1]
    assert [o["name"] for o in card["outputs"]] == ["scaled", "total"]
    assert card["rungs"] == [1, 2, 4, 8] and card["max_wait_ms"] == 2.0
    assert card["dynamic_dims"] == [{"name": "batch", "rungs": [1, 2, 4, 8], "max": 1024}]
    assert card["mask"] is None


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"inputs": {"x": {"dtype": "float32", "data": X}}}, "scale", "missing"),
        (
            {
                **_json_body(),
                "inputs": {**_json_body()["inputs"], "y": {"dtype": "float32", "data": [[1.0]]}},
            },
            "y",
            "unknown_name",
        ),
        (_json_body(x=[[1, 2, 3]] * 3), "x", "static_dim"),
        (_json_body(x=[1.0, 2.0, 3.0]), "x", "rank"),
        (_json_body(scale=[1.0, 2.0]), "scale", "batch"),
        (
            {"inputs": {"x": {"dtype": "float64", "data": X}, "scale": _json_body()["inputs"]["scale"]}},
            "x",
            "dtype",
        ),
    ],
)
def test_a_bad_tensor_is_a_400_naming_it_and_the_rule(factory_server, body, param, code):
    answer = factory_server.post("/v1/infer", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"].startswith(f"{param}: ")


def test_too_many_rows_is_a_400():
    with served_app({"module": "infer_models:scale_factory", "max_rows": 2}) as http:
        answer = http.post("/v1/infer", json=_json_body())
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "too_large"


def test_nan_is_refused_where_the_model_declares_finite_inputs():
    with served_app({"module": "infer_models:finite_scale_factory"}) as http:
        body = _json_body(x=[[float("nan")] * 4] * 3)
        answer = http.post(
            "/v1/infer", content=__import__("json").dumps(body), headers={"content-type": "application/json"}
        )
        assert answer.status_code == 400
        assert (answer.json()["error"]["param"], answer.json()["error"]["code"]) == ("x", "nan")
        nan_scale = _json_body(scale=[float("nan")] * 3)  # scale is not declared finite
        answer = http.post(
            "/v1/infer",
            content=__import__("json").dumps(nan_scale),
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 200


def test_other_mistakes_get_their_own_4xx(factory_server):
    assert (
        factory_server.post(
            "/v1/infer", content=b"{", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert (
        factory_server.post("/v1/infer", content=b"{}", headers={"content-type": "text/plain"}).status_code
        == 415
    )
    wrong_model = factory_server.post("/v1/infer", json={**_json_body(), "model": "other"})
    assert wrong_model.status_code == 404 and wrong_model.json()["error"]["param"] == "model"


def test_integer_and_boolean_tensors_keep_their_dtypes():
    with served_app({"module": "infer_models:mixed_factory"}) as http:
        ids, keep = [[1, 2, 3], [4, 5, 6]], [[True, False, True], [False, False, True]]
        body = {"inputs": {"ids": {"dtype": "int64", "data": ids}, "keep": {"dtype": "bool", "data": keep}}}
        answer = http.post("/v1/infer", json=body)
        assert answer.status_code == 200, answer.text
        halves, sums = answer.json()["outputs"]["output0"], answer.json()["outputs"]["output1"]
    assert halves["dtype"] == "float64" and halves["data"] == [[0.5, 0.0, 1.5], [0.0, 0.0, 3.0]]
    assert sums["dtype"] == "int64" and sums["data"] == [4, 6]


def test_an_exported_program_is_served(tmp_path):
    path = export_scale(tmp_path / "scale.pt2")
    with served_app({"exported": path, "device": "cpu"}) as http:
        card = http.get("/v1/models").json()["data"][0]
        assert [spec["name"] for spec in card["inputs"]] == ["x", "scale"]
        assert [spec["name"] for spec in card["outputs"]] == ["scaled", "total"]
        answer = http.post("/v1/infer", json=_json_body())
        assert answer.status_code == 200, answer.text
        _check_scale_answer({name: np.array(t["data"]) for name, t in answer.json()["outputs"].items()})


def test_everything_is_503_until_the_model_has_started():
    infer_config, serve_config = configs({"module": "infer_models:scale_factory"}, {"retry_after_seconds": 2})
    http = TestClient(build_infer_app(infer_client(infer_config, serve_config), serve_config))
    # no `with`: the lifespan that starts the model never runs, so the server stays "starting"
    for answer in (http.post("/v1/infer", json=_json_body()), http.get("/v1/models"), http.get("/health")):
        assert answer.status_code == 503 and answer.headers["retry-after"] == "2"
    assert http.post("/v1/infer", json=_json_body()).json()["error"]["code"] == "starting"
