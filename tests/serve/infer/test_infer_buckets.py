"""/v1/infer for a model with a dynamic length besides the batch: buckets over batch x length (sim graphs).

Every answer is checked by value against the model run eagerly on that request alone, so a request
padded, stacked with others of other lengths, replayed and sliced back must come out as if it had run by
itself."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import httpx
import numpy as np
import pytest
import torch
from infer_harness import live_infer_server, served_app
from infer_models import LENGTHS, VOCAB, TinyEncoder, encoder_source

from graphrun.errors import ConfigError
from graphrun.serve.infer.bucketed import bucket_dim
from graphrun.serve.infer.dims import DynamicDim

SIM = {"graph_backend": "sim", "cuda_graph_sizes": (1, 2, 4)}
ENCODER = {"module": "infer_models:encoder_factory", **SIM}
REPLAYED = 'graphrun_cuda_graph_replayed_total{{runner="infer-length{}"}}'
FALLBACK = 'graphrun_bucket_eager_fallback_total{reason="padding_mismatch",runner="infer"}'


def _request(seed: int, rows: int, length: int, holes: bool = False) -> dict[str, np.ndarray]:
    """Token ids and a mask of ones (holes: the last real position masked out, as a client's own padding)."""
    gen = np.random.default_rng(seed)
    ids = gen.integers(1, VOCAB, (rows, length), dtype=np.int64)
    mask = np.ones((rows, length), np.int64)
    if holes and length > 1:
        mask[:, -1] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _body(tensors: dict[str, np.ndarray]) -> dict:
    return {"inputs": {name: {"dtype": str(a.dtype), "data": a.tolist()} for name, a in tensors.items()}}


def _eager(tensors: dict[str, np.ndarray], honour_mask: bool = True) -> dict[str, np.ndarray]:
    """The model run eagerly on this request alone."""
    with torch.no_grad():
        out = TinyEncoder(honour_mask).eval()(**{n: torch.from_numpy(a) for n, a in tensors.items()})
    return {name: t.numpy() for name, t in out.items()}


def _check(answer: httpx.Response, tensors: dict[str, np.ndarray], honour_mask: bool = True) -> None:
    assert answer.status_code == 200, answer.text
    got = answer.json()["outputs"]
    rows, length = tensors["input_ids"].shape
    for name, want in _eager(tensors, honour_mask).items():
        assert got[name]["shape"] == list(want.shape), name
        np.testing.assert_allclose(got[name]["data"], want, rtol=1e-5, atol=1e-5, err_msg=name)
    assert got["tokens"]["shape"] == [rows, length, 3]


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


def _replays(metrics: str) -> float:
    found = re.findall(
        r'^graphrun_cuda_graph_replayed_total\{runner="infer-length\d+"\} (\S+)$', metrics, re.M
    )
    return sum(float(value) for value in found)


async def _clients(url: str, requests: list[dict[str, np.ndarray]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as http:
        return await asyncio.gather(*(http.post(url + "/v1/infer", json=_body(r)) for r in requests))


def test_concurrent_clients_of_different_lengths_each_get_eager_answer_for_their_own_input():
    shapes = [(1 + i % 2, length) for i, length in enumerate([1, 3, 4, 5, 7, 8, 9, 12, 16, 2, 6, 15] * 2)]
    requests = [_request(i, rows, length, holes=i % 5 == 0) for i, (rows, length) in enumerate(shapes)]
    infer = {**ENCODER, "cuda_graph_sizes": (1, 2, 4, 8), "max_wait_ms": 50.0}
    with live_infer_server(infer) as srv:
        answers = asyncio.run(_clients(srv.url, requests))
        metrics = httpx.get(srv.url + "/metrics").text
    for answer, tensors in zip(answers, requests, strict=True):
        _check(answer, tensors)
    calls = _metric(metrics, "graphrun_infer_batch_requests_count")
    assert _metric(metrics, "graphrun_infer_batch_requests_sum") == len(requests)
    assert calls < len(requests) / 2, f"{calls} model calls for {len(requests)} requests: no coalescing"
    assert _replays(metrics) >= calls  # every call replayed graphs (oversized batches as chunks)
    assert _metric(metrics, FALLBACK) == 0
    # the traffic histograms hold each request's own length, not its bucket's
    assert _metric(metrics, 'graphrun_bucket_size_count{dim="length",runner="infer"}') == len(requests)
    assert _metric(metrics, 'graphrun_bucket_size_sum{dim="length",runner="infer"}') == sum(
        length for _, length in shapes
    )


def test_one_request_is_padded_to_its_bucket_and_padding_counts_both_dims():
    with served_app(ENCODER) as http:
        before = _metric(http.get("/metrics").text, REPLAYED.format(8))  # verification's replays
        tensors = _request(0, 3, 5)  # 3 rows of 5 tokens: bucket length 8, batch rung 4
        _check(http.post("/v1/infer", json=_body(tensors)), tensors)
        metrics = http.get("/metrics").text
        health = http.get("/health").json()
    assert _metric(metrics, "graphrun_infer_padding_ratio_sum") == pytest.approx(1 - 15 / 32)
    assert _metric(metrics, REPLAYED.format(8)) == before + 1
    assert health["graphs"] == "captured 9/9", health  # 3 length rungs x 3 batch rungs


def test_a_request_above_the_top_batch_rung_runs_in_chunks_and_keeps_its_length():
    with served_app(ENCODER) as http:
        before = _metric(http.get("/metrics").text, REPLAYED.format(16))
        tensors = _request(3, 9, 11)  # 9 rows on a top rung of 4: chunks of 4, 4, 1
        _check(http.post("/v1/infer", json=_body(tensors)), tensors)
        metrics = http.get("/metrics").text
    assert _metric(metrics, REPLAYED.format(16)) == before + 3


@pytest.mark.parametrize(
    ("change", "param", "code"),
    [
        (
            {"input_ids": np.ones((1, 17), np.int64), "attention_mask": np.ones((1, 17), np.int64)},
            "input_ids",
            "too_large",
        ),
        ({"attention_mask": np.ones((1, 6), np.int64)}, "attention_mask", "dynamic_dim"),
        (
            {"input_ids": np.ones((1, 0), np.int64), "attention_mask": np.ones((1, 0), np.int64)},
            "input_ids",
            "dynamic_dim",
        ),
        ({"input_ids": np.ones((1, 5, 1), np.int64)}, "input_ids", "rank"),
    ],
)
def test_bad_lengths_are_400_naming_the_tensor_and_the_rule(change, param, code):
    with served_app(ENCODER) as http:
        answer = http.post("/v1/infer", json=_body({**_request(0, 1, 5), **change}))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    if code == "too_large":
        assert "top rung 16 of length" in error["message"]


def test_models_lists_every_dynamic_dim_with_its_rungs():
    with served_app(ENCODER) as http:
        card = http.get("/v1/models").json()["data"][0]
    batch, length = card["dynamic_dims"]
    assert batch == {"name": "batch", "rungs": [1, 2, 4], "max": 1024}
    assert length["name"] == "length" and length["rungs"] == list(LENGTHS)
    assert length["inputs"] == {"input_ids": 1, "attention_mask": 1} and length["pad_value"] == 0
    assert length["outputs"] == {"tokens": 1}  # inferred: the pooled output follows no length
    assert card["mask"] == "attention_mask"
    ids = next(spec for spec in card["inputs"] if spec["name"] == "input_ids")
    assert ids["shape"] == [None, None] and ids["axes"] == {"batch": 0, "length": 1}
    tokens, pooled = card["outputs"]
    assert tokens["shape"] == [None, None, 3] and tokens["axes"] == {"batch": 0, "length": 1}
    assert pooled["shape"] == [None, 8] and pooled["axes"] == {"batch": 0}


def test_declared_output_axes_are_used():
    with served_app({**ENCODER, "module": "infer_models:declared_encoder_factory"}) as http:
        tensors = _request(4, 2, 6)
        _check(http.post("/v1/infer", json=_body(tensors)), tensors)
        card = http.get("/v1/models").json()["data"][0]
    assert card["dynamic_dims"][1]["outputs"] == {"tokens": 1}


def test_a_model_that_ignores_its_mask_is_never_padded_along_the_length():
    infer = {**ENCODER, "module": "infer_models:unmasked_encoder_factory", "max_wait_ms": 50.0}
    requests = [_request(i, 1, length) for i, length in enumerate([3, 5, 5, 8, 16])]
    with live_infer_server(infer) as srv:
        answers = asyncio.run(_clients(srv.url, requests))
        metrics = httpx.get(srv.url + "/metrics").text
    for answer, tensors in zip(answers, requests, strict=True):
        _check(answer, tensors, honour_mask=False)  # padded, its pool would differ
    # lengths 3 and 5 ran eager at their own size (the two 5s in one call or two)
    assert _metric(metrics, FALLBACK) >= 2


def test_enforce_eager_batches_by_bucket_and_pads_only_to_the_longest():
    with live_infer_server({**ENCODER, "enforce_eager": True, "max_wait_ms": 50.0}) as srv:
        requests = [_request(i, 1, length) for i, length in enumerate([2, 3, 4, 5, 6])]
        answers = asyncio.run(_clients(srv.url, requests))
        health = httpx.get(srv.url + "/health").json()
    for answer, tensors in zip(answers, requests, strict=True):
        _check(answer, tensors)
    assert health["graphs"] == "off"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"dims": (DynamicDim("length", {"input_ids": 2}, LENGTHS),)}, "no example input has"),
        ({"dims": (DynamicDim("length", {"token_ids": 1}, LENGTHS),)}, "no example input has"),
        ({"mask": "input_ids", "dims": ()}, "must be an input carried by one of dims"),
    ],
)
def test_a_source_whose_dims_do_not_fit_its_example_is_refused(change, says):
    source = encoder_source()
    with pytest.raises(ConfigError, match=says):
        dataclasses.replace(source, **change)


def test_declared_outputs_must_name_outputs_of_the_model():
    source = encoder_source()
    length = dataclasses.replace(source.dims[0], outputs={"hidden": 1})
    with pytest.raises(
        ConfigError, match=r"outputs names \['hidden'\]; the model's outputs are \['tokens', 'pooled'\]"
    ):
        bucket_dim(length, ("tokens", "pooled"))


def test_the_model_in_its_own_process_serves_buckets():
    with served_app(ENCODER, engine_process=True) as http:
        tensors = _request(7, 2, 10)
        _check(http.post("/v1/infer", json=_body(tensors)), tensors)
        assert http.get("/v1/models").json()["data"][0]["dynamic_dims"][1]["name"] == "length"
