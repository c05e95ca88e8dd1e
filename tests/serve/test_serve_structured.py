"""Structured output over HTTP: response_format and guided_* on chat and completions, streamed and whole,
and the 400s that name the field of a constraint that cannot work."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serve_harness import LiveServer, live_server, stream_chunks

from graphrun.llm.sampling_params import SamplingParamsError
from graphrun.llm.structured_output import StructuredOutput
from graphrun.serve.structured import requested_constraint

C, CHAT = "/v1/completions", "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "a person as JSON"}]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 5},
        "level": {"type": "integer", "minimum": 1, "maximum": 9},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "level", "ok"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}


@pytest.fixture(scope="module")
def srv():
    with live_server({"max_num_seqs": 4}) as server:
        yield server


def post(srv: LiveServer, path: str, body: dict) -> httpx.Response:
    return httpx.post(srv.url + path, json={"model": "tiny", "max_tokens": 80, **body}, timeout=60)


def ok(srv: LiveServer, path: str, body: dict) -> dict:
    response = post(srv, path, body)
    assert response.status_code == 200, response.text
    return response.json()


def valid(value: object) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"name", "level", "ok"}
        and isinstance(value["name"], str)
        and len(value["name"]) <= 5
        and type(value["level"]) is int
        and 1 <= value["level"] <= 9
        and type(value["ok"]) is bool
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chat_json_schema_answers_parse_and_validate_streamed_or_not(srv, seed):
    body = {"messages": MESSAGES, "response_format": JSON_SCHEMA, "seed": seed}
    choice = ok(srv, CHAT, body)["choices"][0]
    content = choice["message"]["content"]
    assert valid(json.loads(content)), content
    assert choice["finish_reason"] == "stop"
    chunks = stream_chunks(srv, CHAT, body)
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == content
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_completions_take_response_format_and_guided_json_alike(srv):
    by_format = ok(srv, C, {"prompt": "json:", "seed": 3, "response_format": JSON_SCHEMA})["choices"][0]
    by_guided = ok(srv, C, {"prompt": "json:", "seed": 3, "guided_json": json.dumps(SCHEMA)})["choices"][0]
    assert valid(json.loads(by_format["text"])) and by_format["text"] == by_guided["text"]


def test_json_object_answer_is_an_object(srv):
    body = {"messages": MESSAGES, "response_format": {"type": "json_object"}, "seed": 1, "max_tokens": 200}
    choice = ok(srv, CHAT, body)["choices"][0]
    if choice["finish_reason"] == "stop":  # a random walk through any JSON may also run out of tokens
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    else:
        assert choice["message"]["content"].startswith("{")


def test_guided_choice_and_regex_on_completions(srv):
    choices = ["alpha", "beta", "gamma"]
    got = {
        ok(srv, C, {"prompt": "pick", "seed": s, "guided_choice": choices})["choices"][0]["text"]
        for s in range(6)
    }
    assert got <= set(choices) and len(got) > 1
    pattern = r"[0-9]{3}-[a-z]{2,4}"
    for seed in range(3):
        text = ok(srv, C, {"prompt": "code", "seed": seed, "guided_regex": pattern})["choices"][0]["text"]
        assert re.fullmatch(pattern, text), text


def test_guided_grammar_takes_a_gbnf_grammar(srv):
    grammar = 'root ::= "yes" | "no" | "maybe"'
    text = ok(srv, CHAT, {"messages": MESSAGES, "seed": 4, "guided_grammar": grammar})["choices"][0]
    assert text["message"]["content"] in ("yes", "no", "maybe")


def test_free_requests_alongside_structured_ones_answer_as_alone(srv):
    free = {
        "prompt": "free text",
        "temperature": 0,
        "max_tokens": 24,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    alone = ok(srv, C, free)["choices"][0]["token_ids"]
    structured = {"prompt": ["json", "more json"], "seed": 5, "response_format": JSON_SCHEMA}
    with ThreadPoolExecutor(3) as pool:  # in flight together: their steps mix grammar and free rows
        answers = [pool.submit(ok, srv, C, body) for body in (structured, free, free)]
        grammar, *frees = [answer.result() for answer in answers]
    assert all(valid(json.loads(c["text"])) for c in grammar["choices"])
    assert all(f["choices"][0]["token_ids"] == alone for f in frees)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "bogus"}},
                }
            },
            "response_format",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_json": {"type": "object", "properties": {"a": {"type": "nope"}}}}, "guided_json"),
        ({"guided_regex": "a(b"}, "guided_regex"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_grammar": "root ::= undefined"}, "guided_grammar"),
        ({"guided_regex": "a+", "guided_choice": ["a"]}, "guided_choice"),
    ],
)
@pytest.mark.parametrize("path", [C, CHAT])
def test_a_bad_constraint_is_a_400_naming_its_field(srv, extra, param, path):
    prompt = {"prompt": "x"} if path == C else {"messages": MESSAGES}
    response = post(srv, path, {**prompt, **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_response_format_text_is_free_text():
    assert requested_constraint({"response_format": {"type": "text"}, "guided_json": None}) is None
    field, constraint = requested_constraint({"response_format": {"type": "json_object"}})
    assert field == "response_format" and constraint == StructuredOutput.json_object()
    with pytest.raises(SamplingParamsError) as info:
        requested_constraint({"guided_json": "[1, 2]"})
    assert info.value.param == "guided_json"
