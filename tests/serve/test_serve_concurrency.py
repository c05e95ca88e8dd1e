"""64 concurrent streaming clients: every stream completes and equals its prompt's greedy output alone."""

from __future__ import annotations

import asyncio

import openai
import pytest
from serve_harness import LiveServer, live_server

NUM_CLIENTS = 64
PARAMS = {"model": "tiny", "max_tokens": 16, "temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module", params=["thread", "process"])
def srv(request: pytest.FixtureRequest):
    with live_server(engine_process=request.param == "process") as server:
        yield server


async def _stream_all(url: str, prompts: list[str]) -> list[tuple[str, str | None]]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)

    async def one(prompt: str) -> tuple[str, str | None]:
        stream = await client.completions.create(prompt=prompt, stream=True, **PARAMS)
        texts, reason = [], None
        async for chunk in stream:
            texts.append(chunk.choices[0].text)
            reason = chunk.choices[0].finish_reason
        return "".join(texts), reason

    try:
        return await asyncio.gather(*(one(p) for p in prompts))
    finally:
        await client.close()


def test_concurrent_streams_equal_the_same_prompts_run_alone(srv: LiveServer):
    prompts = [f"client {i:02d} says {'xyz'[i % 3] * (1 + i % 5)}" for i in range(NUM_CLIENTS)]
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    alone = [client.completions.create(prompt=p, **PARAMS).choices[0].text for p in prompts]
    replays_before = srv.metric("graphrun_cuda_graph_replayed_total", 'runner="decode-greedy"')

    results = asyncio.run(asyncio.wait_for(_stream_all(srv.url, prompts), timeout=60))

    assert [reason for _, reason in results] == ["length"] * NUM_CLIENTS
    mismatched = [i for i, ((text, _), ref) in enumerate(zip(results, alone, strict=True)) if text != ref]
    assert mismatched == []
    # batched, not serialised: 64 x 15 decode steps alone, far fewer replays when 8 share one
    replays = srv.metric("graphrun_cuda_graph_replayed_total", 'runner="decode-greedy"') - replays_before
    assert replays < NUM_CLIENTS * 15 / 2
    assert srv.worker.num_in_flight == 0
    assert srv.metric("graphrun_kv_blocks_in_use") == 0
