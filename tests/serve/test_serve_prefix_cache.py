"""Prefix caching over HTTP: cached_tokens in usage, hit counters and rate in /metrics, same answers."""

from __future__ import annotations

import httpx
import pytest
from serve_harness import LiveServer, live_server, stream_chunks

SYSTEM = "You are a terse assistant who answers in one line. " * 2  # 104 bytes: 6 full blocks of 16
BODY = {"model": "tiny", "max_tokens": 6, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def srv():
    with live_server() as server:
        yield server


def complete(srv: LiveServer, prompt: str, **extra) -> dict:
    response = httpx.post(srv.url + "/v1/completions", json={**BODY, "prompt": prompt, **extra}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_repeated_prefix_is_reported_cached_and_answers_as_a_miss_does(srv):
    queries = srv.metric("graphrun_prefix_cache_queries_total")
    hits = srv.metric("graphrun_prefix_cache_hits_total")
    first = complete(srv, SYSTEM + "Q: one?")
    again = complete(srv, SYSTEM + "Q: one?")
    other = complete(srv, SYSTEM + "Q: two?")
    num_prompt = first["usage"]["prompt_tokens"]
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    whole = (num_prompt - 1) // 16 * 16  # every full block but the one holding the last prompt token
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == whole
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] == len(SYSTEM) // 16 * 16
    assert again["choices"][0]["text"] == first["choices"][0]["text"]
    assert srv.metric("graphrun_prefix_cache_hits_total") - hits == whole + len(SYSTEM) // 16 * 16
    assert srv.metric("graphrun_prefix_cache_queries_total") - queries == 3 * num_prompt
    assert 0 < srv.metric("graphrun_prefix_cache_hit_rate") < 1


def test_a_stream_reports_cached_tokens_in_its_usage_chunk(srv):
    complete(srv, SYSTEM + "streamed")
    body = {**BODY, "prompt": SYSTEM + "streamed", "stream_options": {"include_usage": True}}
    *_, usage = stream_chunks(srv, "/v1/completions", body)
    assert usage["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_without_prefix_caching_usage_has_no_details():
    with live_server({"enable_prefix_caching": False}) as srv:
        first = complete(srv, SYSTEM)
        again = complete(srv, SYSTEM)
        assert "prompt_tokens_details" not in again["usage"]
        assert again["choices"][0]["text"] == first["choices"][0]["text"]
        assert srv.metric("graphrun_prefix_cache_hits_total") == 0


def test_cached_tokens_cross_the_engine_process_pipe():
    with live_server(engine_process=True) as srv:
        complete(srv, SYSTEM + "piped")
        again = complete(srv, SYSTEM + "piped")
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == len(SYSTEM) // 16 * 16
