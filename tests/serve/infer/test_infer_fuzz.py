"""Fuzzing /v1/infer with hypothesis: names, dtypes, shapes, values and encodings, well-formed or not.
Whatever comes in, the answer is a 200 with the model's outputs or a 4xx naming the rule: never a 5xx."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from infer_harness import served_app
from tensor_fuzz import Spec, fuzz_body

from graphrun.serve.infer.codec import WIRE_DTYPES
from graphrun.serve.infer.errors import RULES

NAMES = st.sampled_from(["x", "scale", "y", "X", ""]) | st.text(max_size=4)
DTYPES = st.sampled_from([*WIRE_DTYPES, "complex64"])
SHAPES = st.lists(st.integers(0, 5), max_size=3).map(tuple)
FILLS = st.sampled_from(["ones", "random", "nan", "inf", "huge"])
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def http():
    # x is declared finite, so the NaN rule is in play; rows up to 4 a request
    with served_app({"module": "infer_models:finite_scale_factory", "max_rows": 4}) as client:
        yield client


def _check(answer) -> None:
    assert answer.status_code < 500, answer.text
    if answer.status_code == 200:
        outputs = answer.json().get("outputs")  # none in a safetensors answer
        assert outputs is None or set(outputs) == {"scaled", "total"}
    else:
        error = answer.json()["error"]
        assert error["code"] in (*RULES, "invalid_json", "model_not_found", "unsupported_media_type"), error


@SETTINGS
@given(
    encoding=st.sampled_from(["json", "npy", "safetensors"]),
    tensors=st.dictionaries(NAMES, st.tuples(DTYPES, SHAPES, FILLS), min_size=1, max_size=3),
)
def test_any_tensors_get_a_200_or_a_400_naming_the_rule(http, encoding, tensors):
    try:
        body = fuzz_body(encoding, tensors)
    except Exception:  # the client side's own encoders refused (an empty safetensors name, ...)
        return
    _check(http.post("/v1/infer", content=json.dumps(body), headers={"content-type": "application/json"}))


@st.composite
def near_misses(draw: st.DrawFn) -> dict[str, Spec]:
    """The model's own inputs, each part right more often than not: the rules past the names in play."""
    rows = draw(st.integers(0, 6))
    x_shape = draw(st.sampled_from([(rows, 4), (rows, 4), (rows, 5), (rows,)]) | SHAPES)
    scale_rows = draw(st.sampled_from([rows, rows, rows + 1]))
    scale_shape = draw(st.sampled_from([(scale_rows, 1), (scale_rows, 1), (scale_rows, 2)]))
    x_dtype = draw(st.sampled_from(["float32", "float32", "float64", "int64"]))
    scale_dtype = draw(st.sampled_from(["float32", "float32", "float16"]))
    return {"x": (x_dtype, x_shape, draw(FILLS)), "scale": (scale_dtype, scale_shape, draw(FILLS))}


@SETTINGS
@given(encoding=st.sampled_from(["json", "npy", "safetensors"]), tensors=near_misses())
def test_near_misses_of_the_right_inputs_never_500(http, encoding, tensors):
    body = fuzz_body(encoding, tensors)
    _check(http.post("/v1/infer", content=json.dumps(body), headers={"content-type": "application/json"}))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@SETTINGS
@given(
    body=JSON
    | st.fixed_dictionaries({"inputs": st.dictionaries(NAMES, JSON, max_size=3)})
    | st.fixed_dictionaries(
        {"inputs": st.dictionaries(NAMES, st.fixed_dictionaries({"dtype": DTYPES, "data": JSON}))}
    )
    | st.fixed_dictionaries(
        {"safetensors": st.text(max_size=40) | st.binary(max_size=40).map(lambda b: b.hex())}
    )
)
def test_any_json_body_never_500s(http, body):
    _check(http.post("/v1/infer", content=json.dumps(body), headers={"content-type": "application/json"}))


@SETTINGS
@given(raw=st.binary(max_size=64))
def test_any_bytes_never_500(http, raw):
    _check(http.post("/v1/infer", content=raw, headers={"content-type": "application/json"}))
