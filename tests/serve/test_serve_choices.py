"""n choices and several prompts per request over HTTP: indices, seeds, one prefill, streaming, errors."""

from __future__ import annotations

from collections import defaultdict

import httpx
import pytest
from serve_harness import LiveServer, live_server, stream_chunks

C, CHAT = "/v1/completions", "/v1/chat/completions"
SEEDED = {"temperature": 1.0, "seed": 11, "max_tokens": 8, "ignore_eos": True, "return_token_ids": True}


@pytest.fixture(scope="module")
def srv():
    with live_server({"max_num_seqs": 8}) as server:
        yield server


def post(srv: LiveServer, path: str, body: dict) -> httpx.Response:
    return httpx.post(srv.url + path, json={"model": "tiny", **body}, timeout=60)


def ok(srv: LiveServer, path: str, body: dict) -> dict:
    response = post(srv, path, body)
    assert response.status_code == 200, response.text
    return response.json()


def test_n_seeded_choices_equal_separate_requests_seeded_seed_plus_j(srv):
    prompt = "the same prompt, four ways"
    out = ok(srv, C, {"prompt": prompt, "n": 4, **SEEDED})
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    for j, choice in enumerate(out["choices"]):
        alone = ok(srv, C, {"prompt": prompt, **SEEDED, "seed": 11 + j})["choices"][0]
        assert (choice["text"], choice["token_ids"]) == (alone["text"], alone["token_ids"])
    assert len({tuple(c["token_ids"]) for c in out["choices"]}) == 4
    again = ok(srv, C, {"prompt": prompt, "n": 4, **SEEDED})
    assert [c["token_ids"] for c in again["choices"]] == [c["token_ids"] for c in out["choices"]]
    usage = out["usage"]
    assert usage["prompt_tokens"] == len(prompt.encode())  # the prompt counts once
    assert usage["completion_tokens"] == 4 * 8 == usage["total_tokens"] - usage["prompt_tokens"]


def test_greedy_choices_are_all_the_one_answer_and_prefill_once(srv):
    prefills, forks = srv.metric("graphrun_prefills_total"), srv.metric("graphrun_choice_forks_total")
    greedy = {"temperature": 0, "max_tokens": 8, "ignore_eos": True}
    out = ok(srv, CHAT, {"messages": [{"role": "user", "content": "hi"}], "n": 4, **greedy})
    assert srv.metric("graphrun_prefills_total") - prefills == 1
    assert srv.metric("graphrun_choice_forks_total") - forks == 3
    alone = ok(srv, CHAT, {"messages": [{"role": "user", "content": "hi"}], **greedy})
    assert [c["message"]["content"] for c in out["choices"]] == [
        alone["choices"][0]["message"]["content"]
    ] * 4
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]


@pytest.mark.parametrize("prompts", [["first prompt", "a second one"], [[72, 105, 33], [66, 121, 101, 46]]])
def test_several_prompts_give_index_prompt_times_n_plus_choice(srv, prompts):
    out = ok(srv, C, {"prompt": prompts, "n": 2, **SEEDED})
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    for i, prompt in enumerate(prompts):
        for j in range(2):
            alone = ok(srv, C, {"prompt": prompt, **SEEDED, "seed": 11 + j})["choices"][0]
            assert out["choices"][i * 2 + j]["token_ids"] == alone["token_ids"]
    counts = [len(p.encode()) if isinstance(p, str) else len(p) for p in prompts]
    assert out["usage"]["prompt_tokens"] == sum(counts)


@pytest.mark.parametrize("path", [C, CHAT])
def test_a_stream_with_several_choices_tags_each_chunk_with_its_index(srv, path):
    body = {"n": 3, **SEEDED, "stream_options": {"include_usage": True}}
    if path == C:
        body["prompt"] = ["one", "two"]
    else:
        body["messages"] = [{"role": "user", "content": "hi"}]
    num = 6 if path == C else 3
    plain = ok(srv, path, body)
    chunks = stream_chunks(srv, path, body)
    *chunks, usage = chunks
    assert usage["choices"] == [] and usage["usage"] == plain["usage"]
    ids, reasons = defaultdict(list), defaultdict(list)
    for chunk in chunks:
        (choice,) = chunk["choices"]
        ids[choice["index"]] += choice.get("token_ids") or []
        if choice["finish_reason"] is not None:
            reasons[choice["index"]].append(choice["finish_reason"])
    assert sorted(ids) == list(range(num)) and all(reasons[i] == ["length"] for i in range(num))
    assert [ids[i] for i in range(num)] == [c["token_ids"] for c in plain["choices"]]
    if path == CHAT:  # each choice opens with the assistant role
        roles = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["delta"].get("role")]
        assert roles == [0, 1, 2]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"n": 0}, "n", None),
        ({"n": 17}, "n", None),
        ({"n": 2, "best_of": 17}, "best_of", None),
        ({"n": 2, "best_of": 9}, "best_of", "too_many_choices"),
        ({"n": 2, "best_of": 3, "stream": True}, "best_of", None),
        ({"n": 2, "best_of": 1}, "best_of", None),
        ({"n": 9}, "n", "too_many_choices"),  # more than the engine's max_num_seqs (8)
        ({"prompt": ["fine", ""]}, "prompt", None),
        ({"prompt": ["x"] * 65}, "prompt", None),
    ],
)
def test_choices_out_of_range_are_400s_naming_the_parameter(srv, body, param, code):
    response = post(srv, C, {"prompt": "hi", "max_tokens": 2, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and (code is None or error["code"] == code)


def test_best_of_equal_to_n_is_the_same_request(srv):
    plain = ok(srv, C, {"prompt": "best", "n": 2, **SEEDED})
    best = ok(srv, C, {"prompt": "best", "n": 2, "best_of": 2, **SEEDED})
    assert [c["token_ids"] for c in best["choices"]] == [c["token_ids"] for c in plain["choices"]]


def test_best_of_answers_the_n_candidates_of_highest_cumulative_logprob(srv):
    """best_of=4, n=2: the answer is the two of the four seeded candidates (the same as n=4) whose
    generated tokens' logprobs sum highest, best first; usage counts all four candidates' tokens."""
    body = {"prompt": ["rank these", "and these"], **SEEDED, "logprobs": 0}
    four = ok(srv, C, {**body, "n": 4})
    best = ok(srv, C, {**body, "n": 2, "best_of": 4})
    assert [c["index"] for c in best["choices"]] == [0, 1, 2, 3]
    for p in range(2):
        candidates = four["choices"][4 * p : 4 * p + 4]
        scores = [sum(c["logprobs"]["token_logprobs"]) for c in candidates]
        order = sorted(range(4), key=lambda i: -scores[i])[:2]
        got = best["choices"][2 * p : 2 * p + 2]
        assert [c["token_ids"] for c in got] == [candidates[i]["token_ids"] for i in order]
    assert best["usage"]["completion_tokens"] == four["usage"]["completion_tokens"] == 8 * 8
    # without logprobs asked for, the ranking still happens and the answer carries none
    bare = ok(srv, C, {**body, "logprobs": None, "n": 2, "best_of": 4})
    assert [c["token_ids"] for c in bare["choices"]] == [c["token_ids"] for c in best["choices"]]
    assert all(c["logprobs"] is None for c in bare["choices"])
