"""Fuzzed request bodies: never a 5xx; a 4xx always carries the OpenAI error shape."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_harness import LiveServer, live_server

COMPLETION = {"model": "tiny", "prompt": "fuzz", "max_tokens": 4}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "fuzz"}], "max_tokens": 4}
FIELDS = [
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
    "seed", "stop", "stop_token_ids", "stream", "stream_options", "n", "logprobs", "ignore_eos", "user",
    "echo", "logit_bias", "presence_penalty",
]  # fmt: skip
SPECIAL = st.sampled_from(
    [0, -1, 1, 2, 2**31, 2**63, -(2**63) - 1, 10**40, 1e308, -1e-308, float("inf"), float("nan"), "",
     "\x00", "é", "\ud800", "日本語", [], {}, [1, 2], [300, 511, 512], ["a", "b"], [[1]], [{"role": "user"}],
     [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], {"include_usage": True}, True, None]
)  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """(path, body bytes): a valid base body with a few fields deleted or replaced, or junk."""
    path = draw(st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return path, draw(st.binary(max_size=40))
    if kind == 1:
        return path, json.dumps(draw(JSON)).encode()
    body = {**draw(st.sampled_from([COMPLETION, CHAT])), **draw(st.sampled_from([{}, {"stream": True}]))}
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        action = draw(st.sampled_from(["delete", "json", "special"]))
        if action == "delete":
            body.pop(field, None)
        else:
            body[field] = draw(JSON if action == "json" else SPECIAL)
    return path, json.dumps(body).encode()  # NaN and Infinity as Python writes them


@pytest.fixture(scope="module")
def srv():
    with live_server({"max_model_len": 64}) as server:
        yield server


@pytest.fixture(scope="module")
def http(srv: LiveServer):
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client


def _check(response: httpx.Response, stream: bool) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]
        return
    if not stream:
        assert response.json()["choices"]
        return
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert events[-1] == "[DONE]"
    assert all("error" not in json.loads(e) for e in events[:-1])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_fuzzed_bodies_never_get_a_5xx(http: httpx.Client, request: tuple[str, bytes]):
    path, body = request
    response = http.post(path, content=body, headers={"content-type": "application/json"})
    stream = response.headers.get("content-type", "").startswith("text/event-stream")
    _check(response, stream)


def test_the_server_is_healthy_after_fuzzing(srv: LiveServer, http: httpx.Client):
    assert http.get("/health").status_code == 200
    assert srv.worker.num_in_flight == 0
    assert srv.metric("graphrun_requests_total", 'status="error"') == 0
