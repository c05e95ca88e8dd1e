"""Stop strings are found whatever the tokenization: property cases over random stop strings (multi-byte
too: CJK, emoji, combining marks) and random splits of the output's bytes into tokens, through both ways
the server reads a request (the SSE stream and the collected answer), and the tiny preset end to end."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from functools import partial
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from serve_harness import LiveServer, live_server

from graphrun.llm.tokenizer import ByteTokenizer
from graphrun.serve.deltas import Collected, Deltas
from graphrun.serve.llm_handle import LLMHandle
from graphrun.serve.metrics import RequestMetrics
from graphrun.serve.responses import CompletionFormat
from graphrun.serve.sse import SSEResponse
from graphrun.serve.text import TextStream

# one to four UTF-8 bytes: ASCII, Latin-1, Hebrew points (the issue's U+05C8), combining marks, a ZWJ,
# CJK, emoji (a skin tone modifier too); any other character, never a lone surrogate or U+FFFD
_CHARS = "ab4 é\u05c8\u0301\u0308\u200d日本語テ🙂👍🏽"
chars = st.one_of(
    st.sampled_from(_CHARS), st.characters(exclude_categories=("Cs",), exclude_characters="\ufffd")
)
stop_lists = st.lists(st.text(chars, min_size=1, max_size=4), min_size=1, max_size=3)


class _PieceTokenizer:
    """A tokenizer whose tokens are arbitrary byte strings (split anywhere, inside a character too), as
    a byte tokenizer's and a byte-level BPE's are; decodes UTF-8 with errors="replace", as both do."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self._pieces = list(pieces)

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self._pieces[i] for i in ids).decode("utf-8", errors="replace")


@st.composite
def outputs(draw: st.DrawFn) -> tuple[tuple[str, ...], str, list[bytes]]:
    """(stop strings, an output text that often holds some of them, its bytes split into tokens)."""
    stops = tuple(draw(stop_lists))
    parts = draw(st.lists(st.one_of(st.text(chars, max_size=6), st.sampled_from(stops)), max_size=8))
    text = "".join(parts)
    data = text.encode()
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=len(data))))
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    return stops, text, pieces


def expected(text: str, stops: tuple[str, ...]) -> tuple[str, str]:
    """The answer's text and finish reason: cut before the stop string that ends first, else the whole."""
    hits = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]
    return (text[: min(hits)[1]], "stop") if hits else (text, "length")


def _check(got_text: str, got_reason: str | None, text: str, stops: tuple[str, ...]) -> None:
    assert (got_text, got_reason) == expected(text, stops)
    assert not any(s in got_text for s in stops)


class _Worker:
    """What SSEResponse and Collected use of an EngineClient."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.aborted = tokenizer, 0
        self.metrics = RequestMetrics(CollectorRegistry())
        self.observer = None

    def deltas(self, handle: LLMHandle, every_batch: bool = False) -> Deltas:
        return Deltas(self.tokenizer, handle, partial(self.abort, handle), every_batch)

    def abort(self, handle: LLMHandle) -> None:
        self.aborted += 1


class _Send:
    """An ASGI send that keeps the body."""

    def __init__(self) -> None:
        self.body = b""

    async def __call__(self, message: dict[str, Any]) -> None:
        self.body += message.get("body", b"")


def _handle(token_ids: list[int], stop: tuple[str, ...]) -> LLMHandle:
    """An admitted request whose engine events (one token each, the last with "length") have arrived."""
    handle = LLMHandle(1, [1], stop, asyncio.get_running_loop())
    handle.admit(1)
    for n, token in enumerate(token_ids, 1):
        handle.put((token, "length" if n == len(token_ids) else None))
    if not token_ids:
        handle.put((None, "length"))
    return handle


async def _streamed(worker: _Worker, token_ids: list[int], stop: tuple[str, ...]) -> tuple[str, str]:
    """The SSE stream's text and last finish reason (events are handed over one by one at attach)."""
    handle, send = _handle(token_ids, stop), _Send()
    watcher = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    response = SSEResponse(worker, [handle], CompletionFormat("m"), watcher, False, False)  # type: ignore[arg-type]
    await asyncio.wait_for(response({"type": "http"}, None, send), 5)  # type: ignore[arg-type]
    events = [e.removeprefix("data: ") for e in send.body.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    choices = [json.loads(e)["choices"][0] for e in events[:-1]]
    return "".join(c["text"] for c in choices), choices[-1]["finish_reason"]


async def _collected(worker: _Worker, token_ids: list[int], stop: tuple[str, ...]) -> tuple[str, str | None]:
    """The non-streamed answer's text and finish reason."""
    handle = _handle(token_ids, stop)
    collected = Collected(worker.deltas(handle))
    handle.attach(collected.on_event)
    await asyncio.wait_for(collected.done, 5)
    return "".join(collected.texts), handle.finish_reason


@settings(max_examples=300, deadline=None)
@given(case=outputs())
def test_the_stream_and_the_collected_answer_end_exactly_before_the_first_stop(case):
    stops, text, pieces = case
    worker = _Worker(_PieceTokenizer(pieces))
    ids = list(range(len(pieces)))
    _check(*asyncio.run(_streamed(worker, ids, stops)), text, stops)
    _check(*asyncio.run(_collected(worker, ids, stops)), text, stops)


@settings(max_examples=300, deadline=None)
@given(case=outputs(), data=st.data())
def test_any_grouping_of_tokens_into_pushes_gives_the_same_answer(case, data):
    stops, text, pieces = case
    stream, ids, got = TextStream(_PieceTokenizer(pieces), stops), list(range(len(pieces))), ""
    sizes = data.draw(st.lists(st.integers(0, 4), max_size=len(ids) + 2))
    pushes = [ids[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(len(sizes))]
    pushes.append(ids[sum(sizes) :])  # the last push carries the engine's finish reason
    hit = False
    for n, push in enumerate(pushes, 1):
        delta, hit = stream.push(push, final=n == len(pushes))
        got += delta
        if hit:
            break
    _check(got, "stop" if hit else "length", text, stops)
    assert stream.text == got


def test_the_issues_stop_string_split_across_byte_tokens_is_found():
    stream, got = TextStream(ByteTokenizer(), stop=("4\u05c8",)), ""
    for byte in "x4\u05c8y".encode():  # "4", then U+05C8 as two tokens (0xd7, 0x88)
        delta, hit = stream.push([byte], final=False)
        got += delta
        assert "4" not in got  # held back while the next character is incomplete
        if hit:
            break
    assert hit and got == "x" and stream.text == "x"


# ----- the tiny preset, end to end ----------------------------------------------------------------------

PROMPT = "Once upon a time"  # the tiny preset's greedy answer holds "4\u05c8" (bytes 34 d7 88)
GREEDY = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def srv():
    with live_server() as server:
        yield server


def _stream_text(srv: LiveServer, body: dict[str, Any]) -> tuple[str, str | None]:
    text, reason = "", None
    with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                text, reason = text + choice["text"], choice["finish_reason"]
    return text, reason


def test_the_tiny_preset_stops_on_4_u05c8_streamed_or_not(srv):
    whole = httpx.post(srv.url + "/v1/completions", json=GREEDY, timeout=30).json()["choices"][0]
    cut = whole["text"].index("4\u05c8")  # the precondition: without the stop, the text holds it
    body = {**GREEDY, "stop": ["4\u05c8"]}
    plain = httpx.post(srv.url + "/v1/completions", json=body, timeout=30).json()["choices"][0]
    assert (plain["text"], plain["finish_reason"]) == (whole["text"][:cut], "stop")
    assert _stream_text(srv, {**body, "stream": True}) == (whole["text"][:cut], "stop")
