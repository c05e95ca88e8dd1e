"""Logprobs over HTTP: OpenAI's completions and chat shapes, streamed and whole, and their 400s."""

from __future__ import annotations

import math

import httpx
import pytest
from serve_harness import LiveServer, live_server, stream_chunks

from graphrun.llm.logprobs import TokenLogprobs
from graphrun.llm.tokenizer import ByteTokenizer
from graphrun.serve.logprobs import LogprobsShape
from graphrun.serve.responses import ChatFormat, CompletionFormat, Usage, model_json

C, CHAT = "/v1/completions", "/v1/chat/completions"
GREEDY = {"model": "tiny", "temperature": 0, "max_tokens": 6, "ignore_eos": True, "return_token_ids": True}
MESSAGES = [{"role": "user", "content": "logprobs, please"}]


@pytest.fixture(scope="module")
def srv():
    with live_server({"max_num_seqs": 4}) as server:
        yield server


def post(srv: LiveServer, path: str, body: dict) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, timeout=60)


def ok(srv: LiveServer, path: str, body: dict) -> dict:
    response = post(srv, path, body)
    assert response.status_code == 200, response.text
    return response.json()


def check_completion_logprobs(lp: dict, text: str, k: int) -> None:
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    joined = "".join(lp["tokens"])
    assert joined == text or "\ufffd" in joined  # a token alone may be part of a character's bytes
    offsets = [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    assert lp["text_offset"] == offsets
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert value <= 0 and top[token] == value
        assert 1 <= len(top) <= k + 1
        if "\ufffd" not in top:  # tokens that decode alone to U+FFFD share a key
            assert len(top) >= k and max(top.values()) == value  # greedy: the most likely


def test_completions_return_logprobs_in_openais_shape_streamed_or_not(srv):
    body = {**GREEDY, "prompt": "a prompt for logprobs", "logprobs": 3}
    whole = ok(srv, C, body)["choices"][0]
    check_completion_logprobs(whole["logprobs"], whole["text"], 3)
    assert len(whole["logprobs"]["tokens"]) == len(whole["token_ids"]) == 6
    chunks = [c for c in stream_chunks(srv, C, body) if c["choices"]]
    merged = {key: [x for c in chunks for x in c["choices"][0]["logprobs"][key]] for key in whole["logprobs"]}
    assert merged["tokens"] == whole["logprobs"]["tokens"]
    assert merged["text_offset"] == whole["logprobs"]["text_offset"]  # offsets continue across chunks
    for a, b in zip(merged["token_logprobs"], whole["logprobs"]["token_logprobs"], strict=True):
        assert math.isclose(a, b, abs_tol=1e-5)
    plain = ok(srv, C, {**GREEDY, "prompt": "a prompt for logprobs"})["choices"][0]
    assert plain["logprobs"] is None and plain["text"] == whole["text"]


def test_chat_returns_logprobs_content_with_top_logprobs_streamed_or_not(srv):
    body = {**GREEDY, "messages": MESSAGES, "logprobs": True, "top_logprobs": 2}
    whole = ok(srv, CHAT, body)["choices"][0]
    content = whole["logprobs"]["content"]
    assert len(content) == len(whole["token_ids"]) == 6
    joined = "".join(item["token"] for item in content)
    assert joined == whole["message"]["content"] or "\ufffd" in joined
    for item in content:
        assert set(item) == {"token", "logprob", "bytes", "top_logprobs"}
        assert item["bytes"] == list(item["token"].encode())
        tops = item["top_logprobs"]
        assert len(tops) == 2 and tops[0]["logprob"] >= tops[1]["logprob"]
        assert tops[0]["token"] == item["token"] and math.isclose(tops[0]["logprob"], item["logprob"])
    chunks = stream_chunks(srv, CHAT, body)
    streamed = [
        x for c in chunks[1:] if c["choices"][0]["logprobs"] for x in c["choices"][0]["logprobs"]["content"]
    ]
    assert [x["token"] for x in streamed] == [x["token"] for x in content]
    assert chunks[0]["choices"][0]["logprobs"] is None  # the role chunk carries none
    no_top = ok(srv, CHAT, {**GREEDY, "messages": MESSAGES, "logprobs": True})["choices"][0]
    assert all(item["top_logprobs"] == [] for item in no_top["logprobs"]["content"])


def test_sampled_tokens_logprobs_match_with_several_choices(srv):
    body = {**GREEDY, "temperature": 1.0, "seed": 5, "prompt": "choices", "n": 2, "logprobs": 1}
    out = ok(srv, C, body)
    for choice in out["choices"]:
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == len(choice["token_ids"])
        for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
            assert top[token] == value or token == "\ufffd"  # a key lone bytes share keeps the larger


def test_echo_with_logprobs_lists_the_prompt_first_with_a_null_first_logprob(srv):
    prompt = "echo this prompt"
    body = {**GREEDY, "prompt": prompt, "echo": True, "logprobs": 2, "max_tokens": 3}
    out = ok(srv, C, body)
    choice = out["choices"][0]
    lp = choice["logprobs"]
    num_prompt = out["usage"]["prompt_tokens"]
    assert choice["text"].startswith(prompt) and len(lp["tokens"]) == num_prompt + 3
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["text_offset"][num_prompt] == len(prompt)  # the completion's tokens follow the prompt's
    for i in (1, num_prompt // 2, num_prompt - 1):  # prompt token i's alternatives: the logits after i tokens
        alone = ok(srv, C, {**GREEDY, "prompt": prompt[:i], "max_tokens": 1, "logprobs": 0})["choices"][0]
        greedy_logprob = alone["logprobs"]["token_logprobs"][0]  # the most likely token's
        assert math.isclose(max(lp["top_logprobs"][i].values()), greedy_logprob, abs_tol=1e-4)
        assert lp["token_logprobs"][i] <= greedy_logprob + 1e-4
        assert lp["tokens"][i] == prompt[i]


def test_echo_with_max_tokens_0_returns_the_prompt_alone(srv):
    prompt = "only the prompt"
    out = ok(srv, C, {"model": "tiny", "prompt": prompt, "echo": True, "max_tokens": 0, "logprobs": 1})
    choice = out["choices"][0]
    assert choice["text"] == prompt and choice["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 0 and len(choice["logprobs"]["tokens"]) == len(prompt)
    plain = ok(srv, C, {**GREEDY, "prompt": prompt, "echo": True, "max_tokens": 2})["choices"][0]
    assert plain["text"].startswith(prompt) and len(plain["text"]) > len(prompt) and plain["logprobs"] is None


def _merged(chunks: list[dict], index: int = 0) -> tuple[str, dict | None]:
    """A streamed choice's text and logprobs lists, the chunks joined (logprobs None: none asked)."""
    mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
    text = "".join(c["text"] for c in mine)
    if mine[0]["logprobs"] is None:
        return text, None
    return text, {key: [x for c in mine for x in c["logprobs"][key]] for key in mine[0]["logprobs"]}


@pytest.mark.parametrize("logprobs", [None, 2])
def test_streamed_echo_sends_the_prompt_first_then_what_a_whole_answer_holds(srv, logprobs):
    prompt = "a streamed echo"
    body = {**GREEDY, "prompt": prompt, "echo": True, "logprobs": logprobs, "max_tokens": 4}
    whole = ok(srv, C, body)
    chunks = stream_chunks(srv, C, {**body, "stream_options": {"include_usage": True}})
    first = chunks[0]["choices"][0]
    assert first["text"] == prompt and first["finish_reason"] is None and first["token_ids"] == []
    text, merged = _merged(chunks)
    choice = whole["choices"][0]
    assert text == choice["text"] and text.startswith(prompt) and len(text) > len(prompt)
    assert [i for c in chunks if c["choices"] for i in c["choices"][0]["token_ids"]] == choice["token_ids"]
    assert chunks[-1]["usage"] == whole["usage"]
    if logprobs is None:
        assert merged is None and choice["logprobs"] is None
        return
    num_prompt = whole["usage"]["prompt_tokens"]
    assert len(first["logprobs"]["tokens"]) == num_prompt and first["logprobs"]["token_logprobs"][0] is None
    assert merged["tokens"] == choice["logprobs"]["tokens"]
    assert merged["text_offset"] == choice["logprobs"]["text_offset"]  # the output's continue the prompt's
    assert merged["top_logprobs"][0] is None and choice["logprobs"]["top_logprobs"][0] is None
    for a, b in zip(merged["token_logprobs"][1:], choice["logprobs"]["token_logprobs"][1:], strict=True):
        assert math.isclose(a, b, abs_tol=1e-5)


def test_streamed_echo_with_max_tokens_0_is_one_prompt_chunk_per_choice(srv):
    prompt = "prompt alone"
    body = {"model": "tiny", "prompt": [prompt, "two"], "echo": True, "max_tokens": 0, "logprobs": 1, "n": 2}
    whole = ok(srv, C, body)
    chunks = stream_chunks(srv, C, {**body, "stream_options": {"include_usage": True}})
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert sorted(c["index"] for c in choices) == [0, 1, 2, 3]  # one chunk each: the prompt, the end
    for c in choices:
        assert c["finish_reason"] == "length"
        assert c["text"] == whole["choices"][c["index"]]["text"] == (prompt if c["index"] < 2 else "two")
        assert c["logprobs"]["tokens"] == whole["choices"][c["index"]]["logprobs"]["tokens"]
    assert chunks[-1]["usage"]["completion_tokens"] == 0 == whole["usage"]["completion_tokens"]
    assert chunks[-1]["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"] == len(prompt) + 3


def test_echo_with_logprobs_and_several_choices_gives_every_choice_the_prompts_logprobs(srv):
    body = {**GREEDY, "temperature": 1.0, "seed": 3, "prompt": "n choices echo", "echo": True, "logprobs": 1}
    out = ok(srv, C, {**body, "n": 3})
    prompt_lists = [c["logprobs"]["token_logprobs"][: len("n choices echo")] for c in out["choices"]]
    assert prompt_lists[0][0] is None and all(p == prompt_lists[0] for p in prompt_lists)
    alone = ok(srv, C, body)["choices"][0]["logprobs"]["token_logprobs"][: len("n choices echo")]
    for a, b in zip(prompt_lists[0][1:], alone[1:], strict=True):
        assert math.isclose(a, b, abs_tol=1e-5)
    streamed = stream_chunks(srv, C, {**body, "n": 3})
    for index in range(3):
        first = next(c["choices"][0] for c in streamed if c["choices"][0]["index"] == index)
        assert (
            first["text"] == "n choices echo"
            and first["logprobs"]["token_logprobs"][1:] == prompt_lists[0][1:]
        )


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        (C, {"prompt": "x", "logprobs": 21}, "logprobs"),
        (C, {"prompt": "x", "logprobs": -1}, "logprobs"),
        (C, {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        (CHAT, {"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        (CHAT, {"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (CHAT, {"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_logprobs_out_of_range_or_unsupported_is_a_400_naming_the_parameter(srv, path, extra, param):
    response = post(srv, path, {"model": "tiny", **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(("fmt_type", "chat"), [(CompletionFormat, False), (ChatFormat, True)])
def test_a_text_built_chunk_with_logprobs_is_the_models_json_byte_for_byte(fmt_type, chat):
    items = [TokenLogprobs(-0.25, (104, 105), (-0.25, -2.5)), TokenLogprobs(-1.5, (33, 10), (-0.5, -1.5))]
    fast_fmt = fmt_type("m", True, LogprobsShape(ByteTokenizer(), chat))
    model_fmt = fmt_type("m", True, LogprobsShape(ByteTokenizer(), chat))
    model_fmt.id, model_fmt.created = fast_fmt.id, fast_fmt.created
    for token_ids in ([104, 10], [105, 33]):  # two chunks: completions' text_offset continues
        fast = fast_fmt.chunk("h\n", None, token_ids, Usage.of(1, 2), 0, items)
        assert fast == model_json(model_fmt.chunk_model("h\n", None, token_ids, Usage.of(1, 2), 0, items))
    if not chat:
        assert '"text_offset":[2,3]' in fast
