"""The official openai client against a live server: completions and chat, streamed and not, errors."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import openai
import pytest
from serve_harness import LiveServer, live_server, wait_until

from graphrun.llm.api import LLM

MAX_MODEL_LEN = 1024
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def srv():  # the engine in its own process, as `graphrun serve` runs it
    with live_server({"max_model_len": MAX_MODEL_LEN}, engine_process=True) as server:
        yield server


@pytest.fixture(scope="module")
def client(srv: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_completion_matches_the_offline_engine_and_counts_usage(client):
    prompt = "Hello, graphs"
    out = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, **GREEDY)
    choice = out.choices[0]
    assert choice.finish_reason == "length"
    assert out.object == "text_completion" and out.model == "tiny" and out.id.startswith("cmpl-")
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(prompt.encode()), 12)
    assert out.usage.total_tokens == len(prompt.encode()) + 12
    llm = LLM("tiny", max_num_seqs=8, max_model_len=MAX_MODEL_LEN, enforce_eager=True)
    from graphrun.llm.sampling_params import SamplingParams

    offline = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0]
    assert choice.text == offline.text


def test_streamed_completion_concatenates_to_the_plain_one(client):
    plain = client.completions.create(model="tiny", prompt="stream me", max_tokens=20, **GREEDY)
    chunks = list(
        client.completions.create(model="tiny", prompt="stream me", max_tokens=20, stream=True, **GREEDY)
    )
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_chat_plain_and_streamed_agree_and_use_the_simple_template(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, **GREEDY)
    assert plain.choices[0].message.role == "assistant"
    assert plain.choices[0].finish_reason == "length"
    rendered = "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
    assert plain.usage.prompt_tokens == len(rendered.encode())  # byte tokenizer: one token per byte
    assert plain.usage.completion_tokens == 10
    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_chat_without_max_tokens_fills_the_context(client):
    out = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x" * 990}], **GREEDY
    )
    assert out.usage.total_tokens == MAX_MODEL_LEN
    assert out.choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_text_and_finishes_with_stop(client, stream):
    prompt = "stop strings"
    full = client.completions.create(model="tiny", prompt=prompt, max_tokens=40, **GREEDY).choices[0].text
    stop = full[6:8]
    expected = full[: full.find(stop)]
    kwargs = {"model": "tiny", "prompt": prompt, "max_tokens": 40, "stop": [stop], **GREEDY}
    if stream:
        chunks = list(client.completions.create(stream=True, **kwargs))
        text, reason = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
    else:
        out = client.completions.create(**kwargs)
        text, reason = out.choices[0].text, out.choices[0].finish_reason
        assert out.usage.completion_tokens < 40  # generation stopped early
    assert (text, reason) == (expected, "stop")


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]


def _error(exc_info: pytest.ExceptionInfo) -> dict:
    body = exc_info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_n_choices_come_back_indexed_and_n_out_of_range_is_a_400(client):
    out = client.completions.create(model="tiny", prompt="hi", max_tokens=2, n=2, seed=1)
    assert [c.index for c in out.choices] == [0, 1]
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="tiny", prompt="hi", max_tokens=2, n=17)
    assert _error(exc)["param"] == "n"


@pytest.mark.parametrize(("prompt", "max_tokens"), [("x" * 1000, 100), ("y" * (MAX_MODEL_LEN + 5), None)])
def test_prompt_plus_max_tokens_beyond_the_context_is_a_400(client, prompt, max_tokens):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens)
    assert _error(exc)["code"] == "context_length_exceeded"


def test_unsupported_and_unknown_things_get_openai_errors(client, srv):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="tiny", prompt="hi", suffix="!")
    assert _error(exc)["code"] == "unsupported" and _error(exc)["param"] == "suffix"
    streamed = list(
        client.completions.create(model="tiny", prompt="hi", echo=True, stream=True, max_tokens=2)
    )
    assert streamed[0].choices[0].text == "hi"  # echo: the prompt comes first
    with pytest.raises(openai.NotFoundError) as not_found:
        client.completions.create(model="gpt-9", prompt="hi")
    assert _error(not_found)["code"] == "model_not_found"
    batch = client.completions.create(model="tiny", prompt=["a", "b"], max_tokens=2)  # a prompt per choice
    assert [c.index for c in batch.choices] == [0, 1]
    with pytest.raises(openai.BadRequestError) as empty:
        client.completions.create(model="tiny", prompt=["a", ""])
    assert _error(empty)["param"] == "prompt"
    wrong_type = httpx.post(srv.url + "/v1/completions", json={"prompt": 5}, timeout=10)
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "prompt"
    route = httpx.get(srv.url + "/v1/nothing", timeout=10)
    assert route.status_code == 404 and route.json()["error"]["type"] == "not_found_error"


def test_logprobs_reach_the_client_across_the_engine_process(client):
    out = client.completions.create(model="tiny", prompt="hi", logprobs=2, max_tokens=3, **GREEDY)
    lp = out.choices[0].logprobs
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.text_offset) == 3
    assert all(value <= 0 for value in lp.token_logprobs)
    messages = [{"role": "user", "content": "hi"}]
    chat = client.chat.completions.create(
        model="tiny", messages=messages, logprobs=True, top_logprobs=2, max_tokens=3, **GREEDY
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(item.top_logprobs) == 2 for item in content)
    echo = client.completions.create(model="tiny", prompt="hi", echo=True, logprobs=1, max_tokens=0)
    assert echo.choices[0].text == "hi" and echo.choices[0].logprobs.token_logprobs[0] is None
    assert echo.choices[0].logprobs.token_logprobs[1] <= 0 and echo.usage.completion_tokens == 0


def test_token_id_prompts_are_accepted_and_checked(client):
    out = client.completions.create(model="tiny", prompt=[72, 105], max_tokens=3, **GREEDY)
    assert out.usage.prompt_tokens == 2
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt=[72, 100_000], max_tokens=3)


def test_health_and_metrics_expose_capture_and_serving_series(srv, client):
    health = httpx.get(srv.url + "/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["decode_graphs"] is True and health.json()["capture_sizes"] == [1, 2, 4, 8]
    client.completions.create(model="tiny", prompt="metrics", max_tokens=4, **GREEDY)
    text = srv.metrics()
    assert 'graphrun_cuda_graph_captured_total{runner="decode-greedy"} 4.0' in text
    for series in (
        'graphrun_requests_total{status="ok"}',
        "graphrun_prompt_tokens_total",
        "graphrun_generation_tokens_total",
        "graphrun_time_to_first_token_seconds_bucket",
        "graphrun_inter_token_latency_seconds_bucket",
        "graphrun_queue_depth",
        "graphrun_kv_blocks_in_use",
        "graphrun_requests_running",
    ):
        assert series in text, series
    assert srv.metric("graphrun_time_to_first_token_seconds_count") >= 1
    assert srv.metric("graphrun_requests_total", 'status="ok"') >= 1


def test_an_unexpected_exception_is_a_500_for_that_request_only(srv, client, monkeypatch):
    tokenizer = srv.worker.model.tokenizer
    encode = tokenizer.encode

    def exploding_encode(text: str) -> list[int]:
        if "boom" in text:
            raise RuntimeError("injected failure")
        return encode(text)

    errors_before = srv.metric("graphrun_requests_total", 'status="error"')
    stream = client.completions.create(model="tiny", prompt="survivor", max_tokens=200, stream=True, **GREEDY)
    first = next(iter(stream))  # a request in flight while another one fails
    monkeypatch.setattr(tokenizer, "encode", exploding_encode)
    with pytest.raises(openai.InternalServerError) as exc:
        client.completions.create(model="tiny", prompt="boom", max_tokens=4)
    assert _error(exc)["type"] == "server_error"
    rest = list(stream)
    assert rest[-1].choices[0].finish_reason == "length" and first.choices[0].finish_reason is None
    assert client.completions.create(model="tiny", prompt="after", max_tokens=2).usage.completion_tokens == 2
    assert srv.metric("graphrun_requests_total", 'status="error"') == errors_before + 1


def test_client_disconnect_aborts_the_request_and_frees_its_blocks(srv):
    max_tokens = 900  # ~3 s of decode on a CPU if it were not aborted
    generated_before = srv.metric("graphrun_generation_tokens_total")
    aborted_before = srv.metric("graphrun_requests_total", 'status="aborted"')
    body = {
        "model": "tiny",
        "prompt": "disconnect",
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", srv.url + "/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()  # kept open: closing the iterator would close the connection
        chunks = 0
        while chunks < 3:
            chunks += next(lines).startswith("data: ")
        assert srv.metric("graphrun_kv_blocks_in_use") > 0
    # leaving the blocks closes the connection mid-stream
    assert wait_until(lambda: srv.metric("graphrun_kv_blocks_in_use") == 0, timeout=10)
    assert srv.metric("graphrun_generation_tokens_total") - generated_before < max_tokens / 2
    assert wait_until(
        lambda: srv.metric("graphrun_requests_total", 'status="aborted"') == aborted_before + 1, 10
    )
    assert srv.worker.num_in_flight == 0


def test_requests_on_several_threads_share_the_engine(client):
    results: list[str] = []

    def run(i: int) -> None:
        out = client.completions.create(model="tiny", prompt=f"thread {i}", max_tokens=5, **GREEDY)
        results.append(out.choices[0].finish_reason)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == ["length"] * 6


def test_a_non_streaming_client_that_disconnects_is_aborted_too(srv):
    max_tokens = 900
    generated_before = srv.metric("graphrun_generation_tokens_total")
    body = json.dumps({"prompt": "gone", "max_tokens": max_tokens, "ignore_eos": True}).encode()
    head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    port = int(srv.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        assert wait_until(lambda: srv.metric("graphrun_kv_blocks_in_use") > 0, timeout=10)
    assert wait_until(lambda: srv.metric("graphrun_kv_blocks_in_use") == 0, timeout=10)
    assert srv.metric("graphrun_generation_tokens_total") - generated_before < max_tokens / 2
    assert wait_until(lambda: srv.worker.num_in_flight == 0, timeout=10)
