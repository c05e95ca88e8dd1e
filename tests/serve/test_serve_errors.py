"""Every error answer names the field to change, in the client's own words (a too-long prompt is `prompt`
or `messages`, never `max_tokens`), and a body not sent as JSON gets a 415 that says what to send."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from serve_harness import LiveServer, live_server

KV_BLOCK_BYTES = 8192  # the tiny preset's KV bytes per block of 16 tokens (CPU, float32)
HI = [{"role": "user", "content": "hi"}]
C, CHAT = "/v1/completions", "/v1/chat/completions"
CTX = "context_length_exceeded"


def _said(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def srv():  # max_model_len 256, but a KV cache of 5 blocks (4 usable: 64 tokens), so the engine rejects too
    with live_server({"cpu_kv_cache_bytes": 5 * KV_BLOCK_BYTES}) as server:
        yield server


def _post(srv: LiveServer, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(srv.url + path, timeout=60, **kwargs)


CASES = [  # (path, body, status, param, code)
    # the context (max_model_len 256), checked by the HTTP side
    (C, {"prompt": "x" * 300, "max_tokens": 2}, 400, "prompt", CTX),
    (C, {"prompt": "x" * 256}, 400, "prompt", CTX),
    (C, {"prompt": "x" * 40, "max_tokens": 250}, 400, "max_tokens", CTX),
    (C, {"prompt": "x" * 250}, 400, "max_tokens", CTX),  # the default 16
    (
        CHAT,
        {"messages": _said("x" * 300)},
        400,
        "messages",
        "context_length_exceeded",
    ),
    (CHAT, {"messages": HI, "max_tokens": 300}, 400, "max_tokens", CTX),
    (
        CHAT,
        {"messages": HI, "max_completion_tokens": 300},
        400,
        "max_completion_tokens",
        "context_length_exceeded",
    ),
    # the KV cache (64 tokens), checked by the engine
    (C, {"prompt": "x" * 100, "max_tokens": 2}, 400, "prompt", "exceeds_cache"),
    (C, {"prompt": "x" * 20, "max_tokens": 100}, 400, "max_tokens", "exceeds_cache"),
    (
        CHAT,
        {"messages": _said("x" * 100), "max_tokens": 2},
        400,
        "messages",
        "exceeds_cache",
    ),
    (CHAT, {"messages": HI, "max_completion_tokens": 100}, 400, "max_completion_tokens", "exceeds_cache"),
    # the other values
    (C, {"prompt": ""}, 400, "prompt", None),
    (C, {"prompt": [72, 100_000]}, 400, "prompt", None),
    (C, {"prompt": "hi", "seed": 2**64}, 400, "seed", None),
    (C, {"prompt": "hi", "stop": ["ok", ""]}, 400, "stop", None),
    (C, {"prompt": "hi", "temperature": "hot"}, 400, "temperature", None),
    (C, {"prompt": "hi", "stop_token_ids": [-1]}, 400, "stop_token_ids", None),
    (C, {"prompt": "hi", "n": 17}, 400, "n", None),
    (C, {"prompt": "hi", "n": 2, "best_of": 4, "stream": True}, 400, "best_of", None),
    (C, {"prompt": "hi", "model": "gpt-9"}, 404, "model", "model_not_found"),
    (CHAT, {"messages": []}, 400, "messages", None),
    (CHAT, {"messages": _said("\ud800")}, 400, "messages", None),
    (CHAT, {"messages": HI, "tools": [{"type": "function"}]}, 400, "tools", "unsupported"),
]


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), CASES)
def test_an_error_names_the_field_the_client_sent(srv, path, body, status, param, code):
    data = json.dumps(body).encode()  # json.dumps escapes a lone surrogate; the server decodes it back
    answer = _post(srv, path, content=data, headers={"content-type": "application/json"})
    error = answer.json()["error"]
    assert (answer.status_code, error["param"], error["code"]) == (status, param, code), error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_the_messages_say_what_to_change(srv):
    long_prompt = _post(srv, C, json={"prompt": "x" * 300}).json()["error"]["message"]
    assert "the prompt has 300 tokens" in long_prompt and "shorten the prompt to at most 255" in long_prompt
    default = _post(srv, C, json={"prompt": "x" * 250}).json()["error"]["message"]
    assert "max_tokens (by default) is 16" in default and "at most 6" in default
    chat = _post(srv, CHAT, json={"messages": HI, "max_completion_tokens": 300}).json()["error"]["message"]
    assert "lower max_completion_tokens to at most" in chat and "shorten the messages" in chat


BODY = b'{"prompt": "hi", "max_tokens": 2}'


@pytest.mark.parametrize("path", [C, CHAT])
@pytest.mark.parametrize(
    "headers", [{}, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}]
)
def test_a_body_not_sent_as_json_is_a_415_that_says_what_to_send(srv, path, headers):
    answer = _post(srv, path, content=BODY, headers=headers)
    error = answer.json()["error"]
    assert answer.status_code == 415 and error["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in error["message"]
    got = repr(headers["content-type"]) if headers else "no Content-Type"
    assert got in error["message"]


def test_json_content_types_are_parsed_and_bad_json_is_a_400(srv):
    for content_type in ("application/json", "application/json; charset=utf-8", "application/vnd.x+json"):
        assert _post(srv, C, content=BODY, headers={"content-type": content_type}).status_code == 200
    bad = _post(srv, C, content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
