"""The serving benchmark's client: streamed completions, parsed SSE, a closed loop of workers.

Each request is a streaming POST /v1/completions with `return_token_ids`, so every chunk says which
tokens it carries and a chunk comes for every batch the engine delivers (random-weight models emit
random bytes, whose text the server holds back; text chunks would not count tokens). Times are taken
on the client when an event is complete: TTFT is send -> the first chunk with token ids. A request is
only "ok" when the stream ended with [DONE], the usage count equals max_tokens and equals the token ids
received; anything else is recorded as failed with its reason (a count mismatch is a "lost" token).

Closed loop: C workers pull the next request from one shared list, in order, and send it as soon as
their previous one ended, so C requests are in flight until the list runs out.

One Python process parsing every stream is itself a bottleneck at thousands of chunks a second: chunks
that arrive together are read one after another, so a stream's timestamps drift by up to a whole
step's worth of parsing and its measured gaps spread. `run_load` can therefore split the C workers over
P client processes (client_pool.py, as C separate clients would be); they take the next request from
one shared counter, so the loop stays closed and in order, and time with perf_counter, one clock across
processes.

Each process reads its streams with `StreamConnection` by default: HTTP/1.1 on asyncio streams, one
keep-alive connection per worker, chunked decoding by hand. httpx parses every chunk through h11 in pure
Python, which costs the client tens of microseconds a chunk and shows up as spread in the measured gaps;
http_client="httpx" keeps it for comparison. http_client="aiohttp" reads through aiohttp, whose HTTP
parser is compiled (llhttp): a maintained client without httpx's per-chunk cost, to replace the hand-written
reader once one GPU figure measured both ways shows the numbers do not move.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import zlib
from array import array
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx

from graphrun.bench.client_pool import Cursor, run_in_loop, run_pool
from graphrun.bench.serve_workload import RequestSpec

log = logging.getLogger(__name__)


class SSEDecoder:
    """Server-sent events, one line at a time: `feed` returns an event's data when a blank line ends it."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """Take one line (without its line ending); the event's data once complete, else None."""
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))
        return None  # event:, id:, retry: carry nothing this client needs

    def flush(self) -> str | None:
        """The data of an event the stream ended without a blank line after (None when there is none)."""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


def parse_sse(text: str) -> list[str]:
    """The data of every event in an SSE body."""
    decoder = SSEDecoder()
    events = [data for line in text.splitlines() if (data := decoder.feed(line)) is not None]
    last = decoder.flush()
    return [*events, last] if last is not None else events


@dataclass(slots=True)
class RequestResult:
    """What one request measured: chunk arrival times (s since send) and sizes, counts, and its outcome."""

    index: int
    num_prompt_tokens: int
    max_tokens: int
    sent_at: float = 0.0  # perf_counter at send: CLOCK_MONOTONIC on Linux, one clock for every process
    chunk_times: list[float] = field(default_factory=list)  # chunks that carried token ids only
    chunk_sizes: list[int] = field(default_factory=list)
    num_usage_tokens: int | None = None  # usage.completion_tokens
    finish_reason: str | None = None
    done: bool = False  # the stream ended with [DONE]
    latency_s: float | None = None
    status: int | None = None  # HTTP status
    error: str | None = None  # None: ok
    lost: bool = False  # usage, max_tokens and the token ids received disagree
    structured: bool = False  # a response_format request: a complete grammar may stop it before max_tokens
    ids_digest: int = 0  # CRC-32 of every token id received, in order (two runs' outputs compare by it)

    @property
    def ok(self) -> bool:
        """Finished, every token accounted for."""
        return self.error is None

    @property
    def num_token_ids(self) -> int:
        """Token ids received over the stream."""
        return sum(self.chunk_sizes)

    @property
    def ttft_s(self) -> float | None:
        """Send -> the first chunk with token ids."""
        return self.chunk_times[0] if self.chunk_times else None

    def fail(self, error: str) -> RequestResult:
        """Record the first reason this request failed; returns self."""
        self.error = self.error or error
        return self

    def check(self) -> None:
        """Fail a request whose stream was cut short or whose token counts disagree."""
        if not self.done:
            self.fail("the stream ended without [DONE]")
        elif self.num_usage_tokens is None:
            self.fail("no usage chunk (stream_options.include_usage was ignored)")
        elif not self.num_usage_tokens == self.num_token_ids == self._expected_tokens():
            self.lost = True
            self.fail(
                f"lost tokens: usage {self.num_usage_tokens}, token ids received {self.num_token_ids}, "
                f"max_tokens {self.max_tokens}"
            )

    def _expected_tokens(self) -> int:
        """max_tokens; for a structured request that stopped, the tokens it says it produced (if fewer)."""
        if self.structured and self.finish_reason == "stop" and self.num_usage_tokens is not None:
            return min(self.num_usage_tokens, self.max_tokens)
        return self.max_tokens

    def on_event(self, event: dict[str, Any], seconds: float) -> None:
        """Apply one parsed chunk that arrived `seconds` after the request was sent."""
        if "error" in event:
            self.fail(f"error event: {event['error'].get('message', event['error'])}")
            return
        for choice in event.get("choices", []):
            ids = choice.get("token_ids")
            if ids is None:
                self.fail("a chunk without token_ids: does the server support return_token_ids?")
            elif ids:
                self.chunk_times.append(seconds)
                self.chunk_sizes.append(len(ids))
                self.ids_digest = zlib.crc32(array("q", ids).tobytes(), self.ids_digest)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        if event.get("usage"):
            self.num_usage_tokens = int(event["usage"]["completion_tokens"])


def request_body(spec: RequestSpec, model: str) -> dict[str, Any]:
    """The streamed, greedy, fixed-length completion request for `spec` (and its response_format)."""
    structured = {"response_format": spec.response_format} if spec.response_format is not None else {}
    return structured | {
        "model": model,
        "prompt": spec.prompt_ids,
        "max_tokens": spec.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }


class LineStreams(Protocol):
    """How a worker sends a streamed POST: the status and the body's lines, inside a context."""

    def stream(
        self, path: str, payload: dict[str, Any]
    ) -> AbstractAsyncContextManager[tuple[int, AsyncIterator[str]]]: ...

    def close(self) -> None: ...


async def stream_request(
    streams: LineStreams, model: str, spec: RequestSpec, timeout: float
) -> RequestResult:
    """Send one request and read its stream to the end; never raises (failures are in the result)."""
    start = time.perf_counter()
    result = RequestResult(spec.index, len(spec.prompt_ids), spec.max_tokens, start)
    result.structured = spec.response_format is not None
    try:
        async with (
            asyncio.timeout(timeout),
            streams.stream("/v1/completions", request_body(spec, model)) as (status, lines),
        ):
            result.status = status
            if status != 200:
                body = "\n".join([line async for line in lines])
                return result.fail(f"HTTP {status}: {body[:300]}")
            await _read_events(lines, result, start)
    except Exception as exc:  # timeouts, HTTP errors, malformed chunks: this request's failure, recorded
        return result.fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    result.latency_s = time.perf_counter() - start
    result.check()
    return result


class HttpxStreams:
    """LineStreams over a shared httpx.AsyncClient (the reader `--http-client httpx` picks)."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client, self.url = client, url

    @asynccontextmanager
    async def stream(
        self, path: str, payload: dict[str, Any]
    ) -> AsyncIterator[tuple[int, AsyncIterator[str]]]:
        """The status and the lines of a streamed POST."""
        async with self.client.stream("POST", self.url + path, json=payload) as response:
            yield response.status_code, response.aiter_lines()

    def close(self) -> None:
        """Nothing of its own to close (the client is shared)."""


class AiohttpStreams:
    """LineStreams over a shared aiohttp.ClientSession (the reader `--http-client aiohttp` picks): its
    HTTP parser is compiled, so a chunk costs the client far less than through httpx's h11."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    @asynccontextmanager
    async def stream(
        self, path: str, payload: dict[str, Any]
    ) -> AsyncIterator[tuple[int, AsyncIterator[str]]]:
        """The status and the lines of a streamed POST."""
        async with self.session.post(self.url + path, json=payload) as response:
            yield response.status, _aiohttp_lines(response)

    def close(self) -> None:
        """Nothing of its own to close (the session is shared)."""


async def _aiohttp_lines(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The body's lines without their line endings, each as soon as it is whole."""
    async for raw in response.content:  # StreamReader iterates by line, ending included
        yield raw.decode().rstrip("\r\n")


async def _read_events(lines: AsyncIterator[str], result: RequestResult, start: float) -> None:
    """Apply every SSE event of `lines` to result, timed as it completes, until [DONE]."""
    decoder = SSEDecoder()
    async for line in lines:
        data = decoder.feed(line)
        if data is None:
            continue
        if data == "[DONE]":
            result.done = True
            return
        result.on_event(json.loads(data), time.perf_counter() - start)


class StreamConnection:
    """One keep-alive HTTP/1.1 connection to the server for streamed POSTs (asyncio streams).

    Sends one request at a time and reads its answer to the end, so the connection is ready for the
    next; a connection the server closed while idle is reopened once. Understands what an ASGI server
    answers: a chunked body, or one with Content-Length.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"StreamConnection speaks plain http://host:port, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post_lines(self, path: str, payload: dict[str, Any]) -> tuple[int, AsyncIterator[str]]:
        """POST JSON; the status and the body's lines (without line endings), read as they arrive."""
        body = json.dumps(payload).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        reused = self._writer is not None
        status_line = await self._send(head + body)
        if not status_line and reused:  # closed by the server while idle: once more on a fresh one
            self.close()
            status_line = await self._send(head + body)
        if not status_line:
            raise ConnectionError("the server closed the connection without answering")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        assert self._reader is not None
        while (line := await self._reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, self._lines(headers)

    @asynccontextmanager
    async def stream(
        self, path: str, payload: dict[str, Any]
    ) -> AsyncIterator[tuple[int, AsyncIterator[str]]]:
        """post_lines as a context: on leaving, the rest of the body is read, so the connection is ready
        for the next request; after an error the connection is closed (its state is unknown)."""
        try:
            status, lines = await self.post_lines(path, payload)
            yield status, lines
            async for _ in lines:
                pass
        except BaseException:
            self.close()
            raise

    async def _send(self, data: bytes) -> bytes:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(data)
        return await self._reader.readline()

    async def _lines(self, headers: dict[str, str]) -> AsyncIterator[str]:
        rest = ""
        async for data in self._body(headers):
            lines = (rest + data.decode()).split("\n")
            rest = lines.pop()
            for line in lines:
                yield line.removesuffix("\r")
        if rest:
            yield rest

    async def _body(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        reader = self._reader
        assert reader is not None
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while size := int((await reader.readline()).split(b";")[0], 16):
                yield (await reader.readexactly(size + 2))[:-2]
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
        elif "content-length" in headers:
            yield await reader.readexactly(int(headers["content-length"]))
        else:  # the body runs to the end of the connection
            yield await reader.read()
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()

    def close(self) -> None:
        """Close the socket (the next request opens a new one)."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


HTTP_CLIENTS = ("raw", "httpx", "aiohttp")


async def _serve_specs(
    url: str,
    model: str,
    take: Callable[[], RequestSpec | None],
    concurrency: int,
    timeout: float,
    http_client: str,
    on_result: Callable[[RequestResult], None],
) -> None:
    """`concurrency` workers, each sending the next spec from `take` until it gives None."""
    if http_client not in HTTP_CLIENTS:
        raise ValueError(f"http_client must be one of {HTTP_CLIENTS}, got {http_client!r}")

    async def workers(make_streams: Callable[[], LineStreams]) -> None:
        async def worker() -> None:
            streams = make_streams()
            try:
                while (spec := take()) is not None:
                    on_result(await stream_request(streams, model, spec, timeout))
            finally:
                streams.close()

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    if http_client == "raw":  # a keep-alive connection per worker
        await workers(lambda: StreamConnection(url))
        return
    if http_client == "aiohttp":
        connector = aiohttp.TCPConnector(limit=concurrency)
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        session = aiohttp.ClientSession(connector=connector, timeout=client_timeout, read_bufsize=1 << 20)
        async with session:  # read_bufsize: an SSE line (logprobs) may be long
            await workers(lambda: AiohttpStreams(session, url))
        return
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        await workers(lambda: HttpxStreams(client, url))


async def run_closed_loop(
    url: str,
    model: str,
    specs: list[RequestSpec],
    concurrency: int,
    timeout: float,
    on_done: Callable[[int], None] | None = None,
    http_client: str = "raw",
) -> tuple[list[RequestResult], float]:
    """Send every request through `concurrency` workers; the results in list order, and wall seconds."""
    results: dict[int, RequestResult] = {}
    pending = iter(specs)  # shared: each worker takes the next spec (one event loop, no lock needed)

    def on_result(result: RequestResult) -> None:
        results[result.index] = result
        if on_done is not None:
            on_done(len(results))

    def take() -> RequestSpec | None:
        return next(pending, None)

    start = time.perf_counter()
    workers = min(concurrency, len(specs))
    await _serve_specs(url, model, take, workers, timeout, http_client, on_result)
    wall = time.perf_counter() - start
    return [results[spec.index] for spec in specs], wall


def default_client_processes(concurrency: int, cpus: int | None = None) -> int:
    """Client processes for `concurrency` streams: one per 4 streams, at most a quarter of the CPUs.

    The server needs the rest (its engine thread, event loop and the GPU driver); a 2-core machine
    gets one process.
    """
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, min(math.ceil(concurrency / 4), cpus // 4))


class Load(NamedTuple):
    """What run_load measured: the results in list order, wall seconds, and the client's CPU seconds."""

    results: list[RequestResult]
    wall_s: float
    client_cpu_s: float  # user + system, every client process together: how busy the measuring side was


def run_load(
    url: str,
    model: str,
    specs: list[RequestSpec],
    concurrency: int,
    timeout: float,
    processes: int = 1,
    on_done: Callable[[int], None] | None = None,
    http_client: str = "raw",
) -> Load:
    """Every request through `concurrency` workers spread over `processes` client processes.

    The wall seconds run from the start signal to the last request's end. processes=1 runs the workers
    in this process.
    """
    processes = max(1, min(processes, concurrency, len(specs)))
    if processes == 1:
        cpu = time.process_time()
        loop = run_closed_loop(url, model, specs, concurrency, timeout, on_done, http_client)
        done, wall = run_in_loop(loop)
        return Load(done, wall, time.process_time() - cpu)
    results: dict[int, RequestResult] = {}

    def on_result(result: RequestResult) -> None:
        results[result.index] = result
        if on_done is not None:
            on_done(len(results))

    args = (url, model, specs, timeout, http_client)
    pool = run_pool(_client_target, args, concurrency, processes, len(specs), on_result=on_result)
    missing = [spec.index for spec in specs if spec.index not in results]
    if missing:
        raise RuntimeError(f"client processes returned no result for requests {missing[:10]}")
    cpu = sum(p.cpu_s for p in pool.processes)
    return Load([results[spec.index] for spec in specs], pool.wall_s, cpu)


async def _client_target(
    cursor: Cursor, concurrency: int, url: str, model: str, specs: list[RequestSpec], timeout: float,
    http_client: str,
) -> None:  # fmt: skip
    """(a client process) `concurrency` workers taking specs from the shared cursor; no warm-up."""
    cursor.begin()

    def take() -> RequestSpec | None:
        index = cursor.take()
        return None if index is None else specs[index]

    await _serve_specs(url, model, take, concurrency, timeout, http_client, cursor.post)
