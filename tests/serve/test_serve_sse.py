"""The SSE response and the collected answer without a server: written or gathered as events are
delivered; a send that must wait."""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from graphrun.llm.tokenizer import ByteTokenizer
from graphrun.serve.deltas import Collected, Deltas
from graphrun.serve.host.messages import EngineFailure
from graphrun.serve.llm_handle import LLMHandle
from graphrun.serve.metrics import RequestMetrics
from graphrun.serve.responses import (
    ChatCompletionChunk,
    ChatFormat,
    CompletionFormat,
    ResponseFormat,
    model_json,
)
from graphrun.serve.sse import SSEResponse, _resume, _Writer


class _Send:
    """An ASGI send that records messages; sends numbered in `waits` block until `gate` is set."""

    def __init__(self, waits: tuple[int, ...] = (), fail: bool = False) -> None:
        self.messages: list[dict[str, Any]] = []
        self.waits, self.fail = waits, fail
        self.gate = asyncio.Event()
        self.calls = 0

    async def __call__(self, message: dict[str, Any]) -> None:
        self.calls += 1
        if self.fail:
            raise OSError("connection reset")
        if self.calls in self.waits:
            await self.gate.wait()
        self.messages.append(message)

    def bodies(self) -> list[tuple[bytes, bool]]:
        return [(m["body"], m["more_body"]) for m in self.messages if m["type"] == "http.response.body"]


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_writes_that_need_no_wait_go_out_at_once_with_no_task():
    async def main() -> None:
        send = _Send()
        writer = _Writer()
        closed = writer.open(send)
        tasks = len(asyncio.all_tasks())
        writer.write(b"a")
        writer.write(b"b")
        assert send.bodies() == [(b"a", True), (b"b", True)]  # written inside write(), synchronously
        writer.write(b"c", last=True)
        assert closed.done() and len(asyncio.all_tasks()) == tasks
        writer.write(b"late")  # after the last part: dropped
        assert send.bodies()[-1] == (b"c", False) and len(send.bodies()) == 3

    _run(main())


def test_a_send_that_waits_holds_later_parts_in_order_and_joins_them():
    async def main() -> None:
        send = _Send(waits=(2,))
        writer = _Writer()
        closed = writer.open(send)
        writer.write(b"a")
        writer.write(b"b")  # the socket is full: this send waits
        writer.write(b"c")
        writer.write(b"d", last=True)
        await asyncio.sleep(0.01)
        assert send.bodies() == [(b"a", True)] and not closed.done()
        send.gate.set()
        await asyncio.wait_for(closed, 1)
        assert send.bodies() == [(b"a", True), (b"b", True), (b"cd", False)]

    _run(main())


def test_a_failing_send_closes_the_writer():
    async def main() -> None:
        send = _Send(fail=True)
        writer = _Writer()
        closed = writer.open(send)
        writer.write(b"a")
        assert closed.done()
        writer.write(b"b")
        assert send.calls == 1

    _run(main())


def test_cancel_stops_a_waiting_send():
    async def main() -> None:
        send = _Send(waits=(1,))
        writer = _Writer()
        writer.open(send)
        writer.write(b"a")
        await asyncio.sleep(0)
        writer.cancel()
        await asyncio.sleep(0.01)
        send.gate.set()
        await asyncio.sleep(0.01)
        assert send.bodies() == []  # the waiting send was cancelled, not completed

    _run(main())


def test_resume_hands_a_failure_of_what_the_coroutine_waits_for_to_it():
    async def main() -> None:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        seen: list[str] = []

        async def waits() -> None:
            try:
                await future
            except ValueError as exc:
                seen.append(str(exc))

        coro = waits()
        blocker = coro.send(None)  # started by hand: it suspends on the future
        assert blocker is future
        task = asyncio.create_task(_resume(coro, blocker))
        await asyncio.sleep(0)
        future.set_exception(ValueError("boom"))
        await asyncio.wait_for(task, 1)
        assert seen == ["boom"]

    _run(main())


class _Worker:
    """What SSEResponse uses of an EngineClient: deltas, abort, metrics, the observer."""

    def __init__(self) -> None:
        self.aborted: list[int] = []
        self.metrics = RequestMetrics(CollectorRegistry())
        self.observer = None

    def deltas(self, handle: LLMHandle, every_batch: bool = False) -> Deltas:
        return Deltas(ByteTokenizer(), handle, partial(self.abort, handle), every_batch)

    def abort(self, handle: LLMHandle) -> None:
        self.aborted.append(handle.request_id)


def _stream(
    worker: _Worker, request_id: int, stop: tuple[str, ...] = (), fmt: ResponseFormat | None = None
) -> tuple[LLMHandle, SSEResponse]:
    loop = asyncio.get_running_loop()
    handle = LLMHandle(request_id, [1, 2], stop, loop)
    handle.admit(request_id)
    watcher = loop.create_task(asyncio.sleep(3600))
    fmt = fmt or CompletionFormat("m")
    response = SSEResponse(worker, [handle], fmt, watcher, True, False)  # type: ignore[arg-type]
    return handle, response


def _events(body: bytes) -> list[Any]:
    parts = [p.removeprefix("data: ") for p in body.decode().split("\n\n") if p]
    return [p if p == "[DONE]" else json.loads(p) for p in parts]


def test_a_stream_whose_client_stopped_reading_delays_no_other_stream():
    async def main() -> None:
        worker = _Worker()
        (slow, slow_response), (fast, fast_response) = _stream(worker, 0), _stream(worker, 1)
        slow_send, fast_send = _Send(waits=(2,)), _Send()  # slow: its first body send waits
        slow_call = asyncio.create_task(slow_response({"type": "http"}, None, slow_send))  # type: ignore[arg-type]
        fast_call = asyncio.create_task(fast_response({"type": "http"}, None, fast_send))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        for i, char in enumerate(b"hello"):  # one step's events for both streams, as a delivery does
            reason = "length" if i == 4 else None
            slow.put((char, reason))
            fast.put((char, reason))
        await asyncio.wait_for(fast_call, 1)  # the fast stream finished while the slow one waits
        texts = [e["choices"][0]["text"] for e in _events(b"".join(b for b, _ in fast_send.bodies()))[:-2]]
        assert "".join(texts) == "hello" and fast_send.bodies()[-1][1] is False
        assert not slow_call.done() and slow_send.bodies() == []
        slow_send.gate.set()
        await asyncio.wait_for(slow_call, 1)
        events = _events(b"".join(b for b, _ in slow_send.bodies()))
        assert "".join(e["choices"][0]["text"] for e in events[:-2]) == "hello"
        assert events[-2]["usage"]["completion_tokens"] == 5 and events[-1] == "[DONE]"
        assert len(slow_send.bodies()) == 2  # the first chunk, then the rest joined in one write
        assert worker.aborted == []

    _run(main())


def test_a_stop_string_ends_the_stream_and_aborts_the_request():
    async def main() -> None:
        worker = _Worker()
        handle, response = _stream(worker, 7, stop=("lo",))
        send = _Send()
        call = asyncio.create_task(response({"type": "http"}, None, send))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        for char in b"hello":
            handle.put((char, None))
        await asyncio.wait_for(call, 1)
        events = _events(b"".join(b for b, _ in send.bodies()))
        assert "".join(e["choices"][0]["text"] for e in events[:-2]) == "hel"
        assert events[-3]["choices"][0]["finish_reason"] == "stop"
        assert worker.aborted == [7]  # once: the tokens after the stop are dropped

    _run(main())


@pytest.mark.parametrize("before_attach", [True, False])
def test_an_engine_failure_is_a_last_error_event(before_attach):
    async def main() -> None:
        worker = _Worker()
        handle, response = _stream(worker, 3)
        send = _Send()
        handle.put((ord("a"), None))
        if before_attach:  # delivered while the headers were being sent: queued, then handed over
            handle.fail(EngineFailure("the engine process exited"))
        call = asyncio.create_task(response({"type": "http"}, None, send))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        if not before_attach:
            handle.fail(EngineFailure("the engine process exited"))
        await asyncio.wait_for(call, 1)
        events = _events(b"".join(b for b, _ in send.bodies()))
        assert events[0]["choices"][0]["text"] == "a"
        assert events[-1]["error"]["type"] == "server_error" and send.bodies()[-1][1] is False
        assert worker.aborted == [3]  # it never finished: the response's end aborts it

    _run(main())


def test_a_collected_answer_gathers_every_delta_and_ends_with_the_request():
    async def main() -> None:
        worker = _Worker()
        handle, _ = _stream(worker, 5, stop=("lo",))
        handle.put((ord("h"), None))  # before attach: waits in the handle
        collected = Collected(worker.deltas(handle))
        handle.attach(collected.on_event)
        assert not collected.done.done()
        for char in b"ello":
            handle.put((char, None))
        await asyncio.wait_for(collected.done, 1)
        assert "".join(collected.texts) == "hel" and handle.finish_reason == "stop"
        assert collected.token_ids == list(b"hello") and worker.aborted == [5]  # ids up to the stop

    _run(main())


def test_a_collected_answer_fails_with_the_engines_error_and_ignores_events_once_closed():
    async def main() -> None:
        worker = _Worker()
        handle, _ = _stream(worker, 6)
        collected = Collected(worker.deltas(handle))
        handle.attach(collected.on_event)
        handle.fail(EngineFailure("the engine process exited"))
        with pytest.raises(EngineFailure):
            await collected.done
        other, _ = _stream(worker, 8)
        left = Collected(worker.deltas(other))
        other.attach(left.on_event)
        left.close()  # the reader went away
        other.put((ord("a"), "length"))
        assert left.texts == [] and left.done.cancelled()

    _run(main())


def test_every_event_of_a_stream_is_framed_once_and_is_its_models_json():
    """Chunks (the opening, text, the last, usage) and the end share one framing and one serialisation."""

    async def main() -> None:
        worker = _Worker()
        handle, response = _stream(worker, 9, fmt=ChatFormat("mödel"))
        send = _Send()
        data = "añ\u2028\x01日".encode()
        for i, char in enumerate(data):
            handle.put((char, "length" if i == len(data) - 1 else None))
        await asyncio.wait_for(response({"type": "http"}, None, send), 1)  # type: ignore[arg-type]
        body = b"".join(b for b, _ in send.bodies()).decode()
        assert body.endswith("\n\n") and all(e.startswith("data: ") for e in body[:-2].split("\n\n"))
        *chunks, done = [e.removeprefix("data: ") for e in body[:-2].split("\n\n")]
        assert done == "[DONE]" and len(chunks) >= 3  # the role, text, the usage
        for chunk in chunks:  # one serialisation: model_json of the chunk it parses to, ASCII
            assert model_json(ChatCompletionChunk.model_validate_json(chunk)) == chunk and chunk.isascii()
        texts = [json.loads(c)["choices"][0]["delta"].get("content", "") for c in chunks[:-1]]
        assert "".join(texts) == "añ\u2028\x01日" and json.loads(chunks[-1])["usage"][
            "completion_tokens"
        ] == len(data)

    _run(main())
