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
P client processes (as C separate clients would be); they take the next request from one shared
counter, so the loop stays closed and in order, and time with perf_counter, one clock across processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

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
    chunk_times: list[float] = field(default_factory=list)  # chunks that carried token ids only
    chunk_sizes: list[int] = field(default_factory=list)
    num_usage_tokens: int | None = None  # usage.completion_tokens
    finish_reason: str | None = None
    done: bool = False  # the stream ended with [DONE]
    latency_s: float | None = None
    status: int | None = None  # HTTP status
    error: str | None = None  # None: ok
    lost: bool = False  # usage, max_tokens and the token ids received disagree

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
        elif not self.num_usage_tokens == self.num_token_ids == self.max_tokens:
            self.lost = True
            self.fail(
                f"lost tokens: usage {self.num_usage_tokens}, token ids received {self.num_token_ids}, "
                f"max_tokens {self.max_tokens}"
            )

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
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        if event.get("usage"):
            self.num_usage_tokens = int(event["usage"]["completion_tokens"])


def request_body(spec: RequestSpec, model: str) -> dict[str, Any]:
    """The streamed, greedy, fixed-length completion request for `spec`."""
    return {
        "model": model,
        "prompt": spec.prompt_ids,
        "max_tokens": spec.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }


async def stream_request(
    client: httpx.AsyncClient, url: str, model: str, spec: RequestSpec, timeout: float
) -> RequestResult:
    """Send one request and read its stream to the end; never raises (failures are in the result)."""
    result = RequestResult(spec.index, len(spec.prompt_ids), spec.max_tokens)
    start = time.perf_counter()
    try:
        async with (
            asyncio.timeout(timeout),
            client.stream("POST", url + "/v1/completions", json=request_body(spec, model)) as response,
        ):
            result.status = response.status_code
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                return result.fail(f"HTTP {response.status_code}: {body[:300]}")
            await _read_stream(response, result, start)
    except Exception as exc:  # timeouts, HTTP errors, malformed chunks: this request's failure, recorded
        return result.fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    result.latency_s = time.perf_counter() - start
    result.check()
    return result


async def _read_stream(response: httpx.Response, result: RequestResult, start: float) -> None:
    decoder = SSEDecoder()
    async for line in response.aiter_lines():
        data = decoder.feed(line)
        if data is None:
            continue
        if data == "[DONE]":
            result.done = True
            return
        result.on_event(json.loads(data), time.perf_counter() - start)


async def run_closed_loop(
    url: str,
    model: str,
    specs: list[RequestSpec],
    concurrency: int,
    timeout: float,
    on_done: Callable[[int], None] | None = None,
) -> tuple[list[RequestResult], float]:
    """Send every request through `concurrency` workers; the results in list order, and wall seconds."""
    results: dict[int, RequestResult] = {}
    pending = iter(specs)  # shared: each worker takes the next spec (one event loop, no lock needed)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for spec in pending:
            results[spec.index] = await stream_request(client, url, model, spec, timeout)
            if on_done is not None:
                on_done(len(results))

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(min(concurrency, len(specs)))))
        wall = time.perf_counter() - start
    return [results[spec.index] for spec in specs], wall


def default_client_processes(concurrency: int, cpus: int | None = None) -> int:
    """Client processes for `concurrency` streams: one per 4 streams, at most a quarter of the CPUs.

    The server needs the rest (its engine thread, event loop and the GPU driver); a 2-core machine
    gets one process.
    """
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, min(math.ceil(concurrency / 4), cpus // 4))


def run_load(
    url: str,
    model: str,
    specs: list[RequestSpec],
    concurrency: int,
    timeout: float,
    processes: int = 1,
    on_done: Callable[[int], None] | None = None,
) -> tuple[list[RequestResult], float]:
    """Every request through `concurrency` workers spread over `processes` client processes.

    Returns the results in list order and the wall seconds from the start signal to the last request's
    end. processes=1 runs the workers in this process.
    """
    processes = max(1, min(processes, concurrency, len(specs)))
    if processes == 1:
        return asyncio.run(run_closed_loop(url, model, specs, concurrency, timeout, on_done))
    ctx = mp.get_context("spawn")  # no inherited threads or sockets; the children import this module
    counter = ctx.Value("i", 0)  # the next spec to send, shared: one closed loop across processes
    start_event = ctx.Event()
    messages: mp.Queue[tuple[str, Any]] = ctx.Queue()
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    children = [
        ctx.Process(
            target=_client_process,
            args=(url, model, specs, share, timeout, counter, start_event, messages),
            name=f"graphrun-bench-client-{i}",
            daemon=True,
        )
        for i, share in enumerate(shares)
    ]
    for child in children:
        child.start()
    for _ in children:  # every child imported and is waiting: start the clock
        _expect(messages, "ready", children)
    start = time.perf_counter()
    start_event.set()
    results: dict[int, RequestResult] = {}
    ends: list[float] = []
    while len(ends) < len(children):
        kind, value = _expect(messages, None, children)
        if kind == "result":
            results[value.index] = value
            if on_done is not None:
                on_done(len(results))
        elif kind == "end":
            ends.append(value)
    for child in children:
        child.join(10)
    missing = [spec.index for spec in specs if spec.index not in results]
    if missing:
        raise RuntimeError(f"client processes returned no result for requests {missing[:10]}")
    return [results[spec.index] for spec in specs], max(ends) - start


def _expect(messages: mp.Queue[tuple[str, Any]], kind: str | None, children: list[Any]) -> tuple[str, Any]:
    """The next message from a client process (of `kind`, when given); raises if a child died."""
    while True:
        try:
            message = messages.get(timeout=1.0)
        except queue.Empty:
            dead = [c.name for c in children if c.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"client process {dead[0]} died") from None
            continue
        if message[0] == "error":
            raise RuntimeError(f"a client process failed: {message[1]}")
        if kind is not None and message[0] != kind:
            raise RuntimeError(f"client process protocol: expected {kind!r}, got {message[0]!r}")
        return message


def _client_process(
    url: str,
    model: str,
    specs: list[RequestSpec],
    concurrency: int,
    timeout: float,
    counter: Any,
    start_event: Any,
    messages: mp.Queue[tuple[str, Any]],
) -> None:
    """(a child) `concurrency` workers taking specs from the shared counter; each result is posted."""
    try:
        messages.put(("ready", None))
        start_event.wait()
        asyncio.run(_shared_loop(url, model, specs, concurrency, timeout, counter, messages))
        messages.put(("end", time.perf_counter()))
    except BaseException as exc:  # reported to the parent, which raises it
        messages.put(("error", f"{type(exc).__name__}: {exc}"))


async def _shared_loop(
    url: str,
    model: str,
    specs: list[RequestSpec],
    concurrency: int,
    timeout: float,
    counter: Any,
    messages: mp.Queue[tuple[str, Any]],
) -> None:
    def take() -> RequestSpec | None:
        with counter.get_lock():
            index = counter.value
            if index >= len(specs):
                return None
            counter.value = index + 1
        return specs[index]

    async def worker(client: httpx.AsyncClient) -> None:
        while (spec := take()) is not None:
            messages.put(("result", await stream_request(client, url, model, spec, timeout)))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
