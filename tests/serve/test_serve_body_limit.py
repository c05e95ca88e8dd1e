"""Request bodies over --max-request-bytes get 413 in the OpenAI shape before they are read: at once from
Content-Length, or as a chunked body passes the limit; bodies under it are served; the server stays
healthy."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from serve_harness import LiveServer, live_server
from starlette.types import Receive, Scope, Send

from graphrun.serve.body_limit import BodyLimit, content_length
from graphrun.serve.config import DEFAULT_MAX_REQUEST_BYTES, ServeConfig

MIB = 2**20


class _Reader:
    """The app behind the middleware: reads the whole body, then answers 200 with its size."""

    def __init__(self) -> None:
        self.num_received = 0  # receive() calls that returned

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size, more = 0, True
        while more:
            message = await receive()
            self.num_received += 1
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


def _post(app, content, headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/completions", content=content, headers=headers)

    return asyncio.run(go())


def _assert_413(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "request_too_large"
    assert "--max-request-bytes" in error["message"]


def test_the_default_limit_is_16_mib():
    assert ServeConfig().max_request_bytes == DEFAULT_MAX_REQUEST_BYTES == 16 * MIB


def test_content_length_over_the_limit_is_refused_before_anything_is_received():
    reader = _Reader()
    response = _post(BodyLimit(reader, max_bytes=100), b"x" * 101)
    _assert_413(response)
    assert "101 bytes" in response.json()["error"]["message"]
    assert reader.num_received == 0  # the app never ran: not one body byte was asked for


def test_a_chunked_body_is_stopped_at_the_limit():
    reader = _Reader()

    async def chunks():
        for _ in range(50):
            yield b"x" * 10

    _assert_413(_post(BodyLimit(reader, max_bytes=100), chunks()))
    assert reader.num_received == 10  # the 11th message would pass the limit: it raised instead


@pytest.mark.parametrize("size", [0, 1, 100])
def test_bodies_up_to_the_limit_pass_whole(size):
    assert _post(BodyLimit(_Reader(), max_bytes=100), b"x" * size).text == str(size)


def test_content_length_is_read_only_when_it_is_a_plain_number():
    assert content_length([(b"content-length", b"42")]) == 42
    assert content_length([(b"host", b"x")]) is None
    assert content_length([(b"content-length", b"-1")]) is None
    assert content_length([(b"content-length", b"1e9")]) is None


# ----- a live server with the default limit ----------------------------------------------------------


@pytest.fixture(scope="module")
def srv():
    with live_server({"enforce_eager": True}) as server:  # graphs are not the question here
        yield server


def _raw_request(url: str, head: str) -> bytes:
    """Send only a request's head (no body) and read the answer until the server has said all of it."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_a_declared_size_over_16_mib_is_answered_without_sending_the_body(srv: LiveServer):
    size = DEFAULT_MAX_REQUEST_BYTES + 1
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n\r\n"
    )
    answer = _raw_request(srv.url, head)  # the body is never sent: the 413 comes back anyway
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "request_too_large" and str(size) in body["error"]["message"]


def test_a_body_over_16_mib_sent_whole_gets_413(srv: LiveServer):
    body = b'{"prompt": "' + b"x" * (DEFAULT_MAX_REQUEST_BYTES) + b'"}'
    response = httpx.post(srv.url + "/v1/completions", content=body, timeout=30,
                          headers={"content-type": "application/json"})  # fmt: skip
    _assert_413(response)


def test_a_chunked_body_over_16_mib_gets_413(srv: LiveServer):
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(17):
            yield b"x" * MIB
        yield b'"}'

    response = httpx.post(srv.url + "/v1/completions", content=chunks(), timeout=30,
                          headers={"content-type": "application/json"})  # fmt: skip
    _assert_413(response)


def test_a_large_body_under_the_limit_is_read_and_judged_on_its_meaning(srv: LiveServer):
    body = json.dumps({"prompt": "x" * MIB, "max_tokens": 2})  # 1 MiB: read whole, then too long a prompt
    response = httpx.post(srv.url + "/v1/completions", content=body, timeout=30,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


def test_the_server_stays_healthy_after_refusing(srv: LiveServer):
    assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
    response = httpx.post(srv.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2
    assert srv.metric("graphrun_requests_total", 'status="invalid"') >= 4  # each 413 (and the 400) counted
    assert srv.worker.num_in_flight == 0
