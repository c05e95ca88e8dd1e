"""Fuzzing /act with hypothesis: names, dtypes, shapes, values, encodings and observation ids, well-formed
or not. Whatever comes in, the answer is a 200 with the action chunk or a 4xx naming the rule: never a 5xx."""

from __future__ import annotations

import json

import pytest
from act_harness import served_policy
from act_models import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensor_fuzz import Spec, fuzz_body

from graphrun.serve.infer.codec import WIRE_DTYPES
from graphrun.serve.infer.errors import RULES

INPUTS = ["images", "tokens", "state", "noise"]
NAMES = st.sampled_from([*INPUTS, "depth", ""]) | st.text(max_size=4)
DTYPES = st.sampled_from(WIRE_DTYPES)
SHAPES = st.lists(st.integers(0, 5), max_size=3).map(tuple)
FILLS = st.sampled_from(["ones", "random", "nan", "inf", "huge", "ids", "negative"])
IDS = st.none() | st.text(max_size=6) | st.integers() | st.lists(st.integers(), max_size=2)
SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CODES = (*RULES, "invalid_json", "model_not_found", "unsupported_media_type")
RIGHT = {
    "images": ("float32", (TINY.num_patches, TINY.patch_dim)),
    "tokens": ("int64", (TINY.num_tokens,)),
    "state": ("float32", (TINY.state_dim,)),
    "noise": ("float32", (TINY.horizon, TINY.action_dim)),
}


@pytest.fixture(scope="module")
def http():
    with served_policy({}) as client:
        yield client


def _body(encoding: str, tensors: dict[str, Spec], observation_id: object) -> dict:
    body = fuzz_body(encoding, tensors, max_id=TINY.vocab_size + 2)
    return body if observation_id is None else {**body, "observation_id": observation_id}


def _check(answer) -> None:
    assert answer.status_code < 500, answer.text
    if answer.status_code == 200:
        body = answer.json()
        assert "safetensors" in body or set(body["outputs"]) == {"actions"}
    else:
        error = answer.json()["error"]
        assert error["code"] in CODES, error


def _post(http, body: dict):
    return http.post("/act", content=json.dumps(body), headers={"content-type": "application/json"})


@SETTINGS
@given(
    encoding=st.sampled_from(["json", "npy", "safetensors"]),
    tensors=st.dictionaries(NAMES, st.tuples(DTYPES, SHAPES, FILLS), min_size=1, max_size=4),
    observation_id=IDS,
)
def test_any_tensors_get_a_200_or_a_400_naming_the_rule(http, encoding, tensors, observation_id):
    try:
        body = _body(encoding, tensors, observation_id)
    except Exception:  # the client side's own encoders refused (an empty safetensors name, ...)
        return
    _check(_post(http, body))


@st.composite
def near_misses(draw: st.DrawFn) -> dict[str, Spec]:
    """The policy's own inputs, each part right more often than not: the rules past the names in play."""
    rows = draw(st.integers(0, 6))
    tensors = {}
    for name, (dtype, rest) in RIGHT.items():
        if name == "noise" and draw(st.booleans()):
            continue  # optional
        shape = draw(st.sampled_from([(rows, *rest), (rows, *rest), (rows + 1, *rest), rest]))
        wrong = "float64" if dtype == "float32" else "int32"
        tensors[name] = (draw(st.sampled_from([dtype, dtype, wrong])), shape, draw(FILLS))
    return tensors


@SETTINGS
@given(encoding=st.sampled_from(["json", "npy", "safetensors"]), tensors=near_misses(), observation_id=IDS)
def test_near_misses_of_the_right_inputs_never_500(http, encoding, tensors, observation_id):
    _check(_post(http, _body(encoding, tensors, observation_id)))
