"""The load client of `bench infer`: seeded random tensors to POST /v1/infer from C concurrent clients.

The client learns what to send from the server's own GET /v1/models card (each input's name, wire dtype
and shape), so it drives any served model. Bodies are made before the timed run, from a seeded numpy
generator, never all zero (a zero input can hide a model that ignores its input): floats are standard
normals, integers are drawn from [1, 8) (small enough for any embedding table), booleans are random with
the first element True. Every answer is checked: status 200, each declared output present with the
declared dtype and the shape (request rows, the declared fixed dims). A request that fails any check,
times out or cannot connect is counted as failed with its reason; none is dropped.

Closed loop: C workers share one list of bodies and a cursor, each sending the next body as soon as its
previous answer has been read and checked, so C requests are in flight until the list runs out. One
process sending and checking every request saturated its core at a few hundred requests a second (an
H100 run measured the client, not the server), so the workers are spread over P client processes
(client_pool.py): each its own event loop, httpx AsyncClient (one connection per worker, kept alive) and
warm-up, all taking the next body from one shared counter. Latency is perf_counter from the send to the
checked answer, on the client; each process's CPU seconds are kept, so a saturated client shows.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from graphrun.bench.client_pool import Cursor, ProcessLoad, run_pool

ENCODINGS = ("npy", "json")
DYNAMIC_LEN = 8  # the size sent for a dynamic dim other than the batch (the batch is the request's rows)
INT_RANGE = (1, 8)
PER_PROCESS = 4  # in-flight requests one client process carries by default


@dataclass(frozen=True, slots=True)
class WireSpec:
    """One input or output of the served model as /v1/models describes it (None: a dynamic dim)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    @classmethod
    def from_card(cls, entry: Mapping[str, Any]) -> WireSpec:
        return cls(str(entry["name"]), str(entry["dtype"]), tuple(entry["shape"]))


@dataclass(frozen=True, slots=True)
class ServedCard:
    """What the bench needs of GET /v1/models: the served name, its inputs and outputs."""

    model: str
    inputs: tuple[WireSpec, ...]
    outputs: tuple[WireSpec, ...]
    rungs: tuple[int, ...]

    @classmethod
    def from_models(cls, body: Mapping[str, Any]) -> ServedCard:
        card = body["data"][0]
        return cls(
            str(card["id"]),
            tuple(WireSpec.from_card(e) for e in card["inputs"]),
            tuple(WireSpec.from_card(e) for e in card["outputs"]),
            tuple(int(r) for r in card["rungs"]),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: its index, when it was sent (perf_counter), its latency, and why it failed if it did."""

    index: int
    sent_at: float
    latency_s: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Load:
    """The outcomes of one closed-loop run (in index order), its wall time and the client's CPU seconds."""

    outcomes: tuple[Outcome, ...]
    wall_s: float
    client_cpu_s: float  # every client process together
    processes: tuple[ProcessLoad, ...] = ()  # per client process: busy and CPU seconds
    warmup: tuple[Outcome, ...] = ()  # the untimed requests before the start, in index order


def random_array(spec: WireSpec, rows: int, rng: np.random.Generator) -> np.ndarray:
    """A random tensor for `spec` with `rows` rows, never all zero."""
    shape = (rows, *(DYNAMIC_LEN if size is None else size for size in spec.shape[1:]))
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        array = rng.standard_normal(shape).astype(dtype)
    elif dtype.kind in "iu":
        array = rng.integers(*INT_RANGE, size=shape).astype(dtype)
    elif dtype.kind == "b":
        array = rng.random(shape) < 0.5
    else:
        raise ValueError(f"input {spec.name!r}: no random values for dtype {spec.dtype}")
    if not array.any():
        array.reshape(-1)[0] = 1
    return array


def encode_body(arrays: Mapping[str, np.ndarray], encoding: str) -> bytes:
    """A /v1/infer body: base64 .npy per tensor, or nested JSON lists with their dtype."""
    if encoding == "npy":
        inputs = {name: {"npy": _npy(array)} for name, array in arrays.items()}
    elif encoding == "json":
        inputs = {name: {"dtype": a.dtype.name, "data": a.tolist()} for name, a in arrays.items()}
    else:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    return json.dumps({"inputs": inputs}).encode()


def plan_bodies(inputs: Sequence[WireSpec], rows: int, num: int, seed: int, encoding: str) -> list[bytes]:
    """`num` request bodies of `rows` rows each, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [encode_body({s.name: random_array(s, rows, rng) for s in inputs}, encoding) for _ in range(num)]


def check_answer(answer: Any, outputs: Sequence[WireSpec], rows: int) -> str | None:
    """Why an answer's body is wrong (a missing output, another dtype or shape), or None when right."""
    got = answer.get("outputs") if isinstance(answer, dict) else None
    if not isinstance(got, dict):
        return "the answer has no `outputs` object"
    for spec in outputs:
        if spec.name not in got:
            return f"output {spec.name!r} is missing"
        try:
            array = _decoded(got[spec.name])
        except (ValueError, KeyError, TypeError) as exc:
            return f"output {spec.name!r} does not decode: {exc}"
        if array.dtype.name != spec.dtype:
            return f"output {spec.name!r} has dtype {array.dtype.name}, expected {spec.dtype}"
        want = (rows, *spec.shape[1:])
        fits = len(array.shape) == len(want)
        if not fits or any(w is not None and w != g for w, g in zip(want, array.shape, strict=True)):
            return f"output {spec.name!r} has shape {list(array.shape)}, expected {list(want)}"
    return None


def default_client_processes(concurrency: int, cpus: int | None = None) -> int:
    """Client processes for `concurrency` workers: one per PER_PROCESS, leaving 2 CPUs to the server.

    One process sending and checking ~1 ms requests saturates its core at a few hundred requests a
    second, so each carries at most PER_PROCESS in flight; the server's event loop and batching thread
    keep two CPUs (a 2-core machine gets one client process).
    """
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, min(math.ceil(concurrency / PER_PROCESS), cpus - 2))


def run_load(
    url: str,
    warmup: Sequence[bytes],
    bodies: Sequence[bytes],
    card: ServedCard,
    rows: int,
    concurrency: int,
    timeout: float,
    processes: int = 1,
    on_start: Callable[[], None] | None = None,
) -> Load:
    """Warm-up, then every body through `concurrency` workers over `processes` processes; in order.

    `on_start` runs between the warm-up and the timed run (every process warmed up, the clock not started).
    """
    args = (url, list(warmup), list(bodies), card, rows, timeout)
    pool = run_pool(_target, args, concurrency, processes, len(bodies), len(warmup), on_start=on_start)
    outcomes = sorted(pool.results, key=lambda o: o.index)
    if [o.index for o in outcomes] != list(range(len(bodies))):
        raise RuntimeError(f"{len(outcomes)} outcomes for {len(bodies)} requests: one lost or doubled")
    cpu = sum(p.cpu_s for p in pool.processes)
    warm = tuple(sorted(pool.warmup, key=lambda o: o.index))
    return Load(tuple(outcomes), pool.wall_s, cpu, pool.processes, warm)


async def _target(
    cursor: Cursor, concurrency: int, url: str, warmup: list[bytes], bodies: list[bytes], card: ServedCard,
    rows: int, timeout: float,
) -> None:  # fmt: skip
    """(a client process) its own client and connections: warm-up bodies, the start, the timed bodies."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, headers=headers) as http:

        async def worker(phase_bodies: list[bytes]) -> None:
            while (index := cursor.take()) is not None:
                cursor.post(await _send(http, index, phase_bodies[index], card, rows))

        await asyncio.gather(*(worker(warmup) for _ in range(concurrency)))
        cursor.begin()
        await asyncio.gather(*(worker(bodies) for _ in range(concurrency)))


async def _send(http: httpx.AsyncClient, index: int, body: bytes, card: ServedCard, rows: int) -> Outcome:
    sent = time.perf_counter()
    try:
        response = await http.post("/v1/infer", content=body)
        if response.status_code != 200:
            error: str | None = f"HTTP {response.status_code}: {response.text[:200]}"
        else:
            error = check_answer(response.json(), card.outputs, rows)
    except (httpx.HTTPError, ValueError) as exc:  # a timeout, a refused connection, a body not JSON
        error = f"{type(exc).__name__}: {exc}"
    return Outcome(index, sent, time.perf_counter() - sent, error)


def _npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode()


def _decoded(entry: Mapping[str, Any]) -> np.ndarray:
    """An output tensor of the answer, in whichever encoding it came."""
    if "npy" in entry:
        return np.load(io.BytesIO(base64.b64decode(entry["npy"])), allow_pickle=False)
    array = np.asarray(entry["data"], dtype=np.dtype(entry["dtype"]))
    if list(array.shape) != list(entry["shape"]):
        raise ValueError(f"data of shape {list(array.shape)} under `shape` {entry['shape']}")
    return array
