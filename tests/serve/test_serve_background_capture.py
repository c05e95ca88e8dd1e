"""`graphrun serve --capture background`: /health says 200 before the graphs are captured, reports their
progress, and requests served while rungs switch to replay neither fail nor change their answers."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
from serve_harness import live_server, wait_until

from graphrun.llm.engine import LLMEngine

PROMPTS = [f"tell me about the number {i}" for i in range(6)]
RUNG_SECONDS = 0.15  # each rung's capture made slower, so requests surely meet the switch


@pytest.fixture
def slow_rungs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each background rung takes RUNG_SECONDS longer; returns the progress seen after each one."""
    original = LLMEngine.capture_step
    seen: list[str] = []

    def capture_step(self: LLMEngine) -> bool:
        time.sleep(RUNG_SECONDS)
        done = original(self)
        seen.append(self.graph_progress())
        return done

    monkeypatch.setattr(LLMEngine, "capture_step", capture_step)
    return seen


def complete(url: str, prompt: str) -> httpx.Response:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0}
    return httpx.post(url + "/v1/completions", json=body, timeout=120)


def test_health_is_200_before_capture_ends_and_no_request_fails_during_the_switch(slow_rungs):
    engine = {"capture": "background", "max_model_len": 128, "cuda_graph_mode": "full"}
    with live_server(engine=engine) as srv:
        health = httpx.get(srv.url + "/health", timeout=60)
        assert health.status_code == 200  # ready before the graphs are
        total = int(health.json()["graphs"].split("/")[1])
        assert health.json()["graphs"].startswith("capturing ") and health.json()["capture"] == "background"
        responses: dict[str, httpx.Response] = {}

        def ask(prompt: str) -> None:
            responses[prompt] = complete(srv.url, prompt)

        threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS]
        for t in threads:
            t.start()
            time.sleep(RUNG_SECONDS)  # arrive one by one, over several rungs
        for t in threads:
            t.join(120)
        assert all(r.status_code == 200 for r in responses.values()), [r.text for r in responses.values()]
        during = {p: r.json()["choices"][0]["text"] for p, r in responses.items()}
        assert "capturing" in " ".join(slow_rungs)  # the idle loop captured between requests
        done = f"captured {total}/{total}"
        assert wait_until(lambda: httpx.get(srv.url + "/health").json()["graphs"] == done, 120)
        after = {p: complete(srv.url, p).json()["choices"][0]["text"] for p in PROMPTS}
        assert during == after  # the switch changed no answer
        assert srv.metric("graphrun_cuda_graph_pending_rungs", 'runner="decode-greedy"') == 0
        assert srv.metric("graphrun_cuda_graph_replayed_total", 'runner="decode-greedy"') > 0
        # requests ran eager while their rungs were pending, and through graphs once they landed
        labels = 'reason="capturing",runner="decode-greedy"'
        assert srv.metric("graphrun_cuda_graph_eager_fallback_total", labels) > 0


def test_an_engine_process_reports_graph_progress_on_health():
    engine = {"capture": "background", "max_model_len": 64, "cuda_graph_max_prefill_tokens": 16}
    # the FULL runners only (the piecewise ladder would add more): 3 decode kinds (sampling, greedy,
    # logprobs; the structured ones wait for a structured step) x 4 rungs and the prefill graph's 1
    engine["cuda_graph_mode"] = "full"
    with live_server(engine=engine, engine_process=True) as srv:
        body = httpx.get(srv.url + "/health", timeout=60).json()
        assert body["status"] == "ok" and re.fullmatch(r"(capturing|captured) \d+/13", body["graphs"])
        assert wait_until(lambda: httpx.get(srv.url + "/health").json()["graphs"] == "captured 13/13", 120)
        assert complete(srv.url, PROMPTS[0]).status_code == 200
