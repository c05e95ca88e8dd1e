"""The serving benchmark's load generator against a live server: one process or several, same answers."""

from __future__ import annotations

import asyncio
import json

import pytest
from serve_harness import live_server

from graphrun.bench.serve_client import StreamConnection, default_client_processes, run_load
from graphrun.bench.serve_workload import Workload, plan_requests


def test_default_client_processes_leave_most_cpus_to_the_server():
    assert default_client_processes(16, cpus=16) == 4
    assert default_client_processes(16, cpus=2) == 1
    assert default_client_processes(3, cpus=64) == 1
    assert default_client_processes(64, cpus=64) == 16


@pytest.mark.parametrize(("processes", "http_client"), [(1, "raw"), (3, "raw"), (1, "httpx"), (2, "aiohttp")])
def test_every_request_completes_once_in_order_with_one_or_several_client_processes(processes, http_client):
    workload = Workload(num_requests=9, prompt_len_median=8, prompt_len_max=16, output_len_median=6,
                        output_len_max=12, seed=3)  # fmt: skip
    specs = plan_requests(workload, workload.num_requests, vocab_size=512, max_model_len=256, label="t")
    done: list[int] = []
    with live_server() as srv:
        results, wall, client_cpu = run_load(
            srv.url, "tiny", specs, 4, 60.0, processes=processes, on_done=done.append, http_client=http_client
        )
    assert [r.index for r in results] == [s.index for s in specs]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert [r.num_token_ids for r in results] == [s.max_tokens for s in specs]
    assert done == list(range(1, 10)) and wall > 0
    assert wall >= max(r.latency_s or 0 for r in results)
    assert 0 < client_cpu < wall * processes + 1  # the clients' own CPU time, every process counted


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_stream_connection_reads_chunked_and_sized_answers_and_reopens_a_closed_connection():
    """A hand-written server: a chunked SSE answer split mid-line, then it closes; a sized 400 next."""
    sse = _chunked(b'data: {"a": 1}\n', b'\ndata: {"b"', b": 2}\n\ndata: [DONE]\n\n")
    answers = [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + sse,
        b'HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n{"error": 1}',
    ]
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(v for k, v in (h.split(b": ") for h in head.split(b"\r\n")[1:-2]) if k == b"Content-Length")
        )
        json.loads(await reader.readexactly(length))
        writer.write(answers[connections - 1])
        await writer.drain()
        writer.close()  # every answer is the connection's last: the client must open a new one

    async def scenario() -> tuple[list[str], int, list[str]]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = StreamConnection(f"http://127.0.0.1:{port}")
        status, lines = await conn.post_lines("/v1/completions", {"x": 1})
        first = [line async for line in lines]
        await asyncio.sleep(0.05)  # the server has closed it by now
        status2, lines2 = await conn.post_lines("/v1/completions", {"x": 2})
        second = [line async for line in lines2]
        conn.close()
        server.close()
        return first, status + status2, second

    first, statuses, second = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert first == ['data: {"a": 1}', "", 'data: {"b": 2}', "", "data: [DONE]", ""]
    assert statuses == 600 and second == ['{"error": 1}'] and connections == 2
