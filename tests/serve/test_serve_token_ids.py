"""The return_token_ids extension: every chunk carries its token ids, one chunk per batch of tokens."""

from __future__ import annotations

import httpx
import pytest
from serve_harness import live_server, stream_chunks

GREEDY = {"temperature": 0, "ignore_eos": True}
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def srv():
    with live_server() as server:
        yield server


@pytest.mark.parametrize(
    ("path", "request_body"),
    [
        ("/v1/completions", {"prompt": [7, 300, 12, 499, 0]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "ids"}]}),
    ],
)
def test_streamed_token_ids_concatenate_to_the_plain_answers_and_count_usage(srv, path, request_body):
    body = {**request_body, "max_tokens": MAX_TOKENS, "return_token_ids": True, **GREEDY}
    plain = httpx.post(srv.url + path, json=body, timeout=30).json()
    plain_ids = plain["choices"][0]["token_ids"]
    assert len(plain_ids) == plain["usage"]["completion_tokens"] == MAX_TOKENS
    chunks = stream_chunks(srv, path, {**body, "stream_options": {"include_usage": True}})
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert all("token_ids" in choice for choice in choices)
    streamed = [i for choice in choices for i in choice["token_ids"]]
    assert streamed == plain_ids
    assert chunks[-1]["usage"]["completion_tokens"] == len(streamed)
    generated = choices[1:] if path.endswith("chat/completions") else choices  # chat opens with the role
    assert all(choice["token_ids"] for choice in generated)  # a chunk per batch, none empty


def test_random_bytes_still_get_a_chunk_per_batch_when_the_text_is_held_back(srv):
    """Byte-level ids >= 128 are partial UTF-8: their text waits, their ids do not."""
    body = {"prompt": [200, 201, 202], "max_tokens": MAX_TOKENS, "return_token_ids": True, **GREEDY}
    choices = [c["choices"][0] for c in stream_chunks(srv, "/v1/completions", body)]
    text = "".join(choice["text"] for choice in choices)
    plain = httpx.post(srv.url + "/v1/completions", json=body, timeout=30).json()["choices"][0]
    assert text == plain["text"]
    assert sum(len(choice["token_ids"]) for choice in choices) == MAX_TOKENS
    held_back = [c for c in choices if not c["text"] and c["finish_reason"] is None]
    assert held_back and all(c["token_ids"] for c in held_back)


@pytest.mark.parametrize("stream", [False, True])
def test_without_the_flag_no_choice_carries_token_ids(srv, stream):
    body = {"prompt": "plain", "max_tokens": 8, **GREEDY}
    if stream:
        choices = [c["choices"][0] for c in stream_chunks(srv, "/v1/completions", body)]
    else:
        choices = httpx.post(srv.url + "/v1/completions", json=body, timeout=30).json()["choices"]
    assert choices and all("token_ids" not in choice for choice in choices)
    assert all(set(choice) == {"index", "text", "logprobs", "finish_reason"} for choice in choices)


def test_health_reports_vocab_and_memory_read_now(srv):
    health = httpx.get(srv.url + "/health", timeout=10).json()
    assert health["vocab_size"] == 512
    memory = health["memory"]
    assert memory["max_rss_bytes"] > 2**20
    assert memory["kv_cache_bytes"] > 0 and memory["graph_pool_mib"] >= 0
    assert "cuda_reserved_bytes" not in memory  # the tiny server runs on the CPU
