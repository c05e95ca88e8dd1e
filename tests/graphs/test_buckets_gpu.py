"""Buckets over batch x length on CUDA graphs: pad + mask + slice == eager; an unsafe model is caught."""

from __future__ import annotations

import pytest
import torch
from bucket_models import TinyEncoder, encoder_inputs

from graphrun.bench.models import masked_encoder
from graphrun.graphs import BucketDim, BucketedRunner, BucketOptions, CallFallback
from graphrun.graphs.options import RunnerOptions

pytestmark = pytest.mark.gpu

LENGTH = BucketDim("length", {"input_ids": 1, "attention_mask": 1}, (8, 16, 32))


def build(model, registry, example) -> BucketedRunner:
    options = BucketOptions(
        (LENGTH,), "attention_mask", runner=RunnerOptions(sizes=(1, 2, 4, 8), registry=registry)
    )
    return BucketedRunner(model, example, options)


def test_masked_encoder_buckets_equal_eager_on_cuda(registry):
    model = masked_encoder(small=True).to("cuda").eval().requires_grad_(False)
    example = encoder_inputs(2, 16, device="cuda")
    runner = build(model, registry, example)
    assert runner.backend.name == "cuda"
    status = runner.status()
    assert all(not b.exact_dims and b.num_captured == 4 for b in status.buckets), str(status)
    for batch in (1, 3, 8):
        for length in (1, 5, 8, 9, 16, 23, 32):
            inputs = encoder_inputs(batch, length, seed=batch * 64 + length, device="cuda")
            got, want = runner(**inputs), model(**inputs)
            assert got["hidden"].shape == (batch, length, 64)
            torch.testing.assert_close(got["hidden"], want["hidden"], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got["pooled"], want["pooled"], rtol=1e-4, atol=1e-4)
    assert all(runner.runner(b).stats.num_replayed > 0 for b in runner.buckets)
    assert runner.stats.eager_fallback == {}


def test_unsafe_model_replays_exact_lengths_only_on_cuda(registry):
    model = TinyEncoder(honour_mask=False).to("cuda").eval().requires_grad_(False)
    runner = build(model, registry, encoder_inputs(2, 8, device="cuda"))
    assert all(b.exact_dims == ("length",) for b in runner.status().buckets)
    for length in (8, 11):
        inputs = encoder_inputs(2, length, device="cuda")
        torch.testing.assert_close(
            runner(**inputs)["pooled"], model(**inputs)["pooled"], rtol=1e-4, atol=1e-5
        )
    assert runner.stats.eager_fallback == {CallFallback.PADDING_MISMATCH: 1}
