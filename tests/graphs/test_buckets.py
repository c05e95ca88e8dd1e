"""Buckets over batch x length: pad + mask + slice equals eager, budgets refuse, verification catches a
model that is not padding-safe along the length."""

from __future__ import annotations

import pytest
import torch
from bucket_models import TinyEncoder, encoder_inputs
from prometheus_client import generate_latest

from graphrun.errors import ConfigError, GraphInputError
from graphrun.graphs import Bucket, BucketDim, BucketedRunner, BucketOptions, CallFallback
from graphrun.graphs.options import RunnerOptions

LENGTHS = (4, 8, 16)
BATCHES = (1, 2, 4)


def options(registry, **kw) -> BucketOptions:
    runner = RunnerOptions(
        sizes=BATCHES, backend="sim", registry=registry, memory_budget_bytes=kw.pop("budget", None)
    )
    dim = BucketDim("length", {"input_ids": 1, "attention_mask": 1}, LENGTHS, pad_value=0)
    return BucketOptions(dims=(dim,), mask="attention_mask", runner=runner, **kw)


def build(registry, model=None, **kw) -> BucketedRunner:
    model = (model or TinyEncoder()).eval().requires_grad_(False)
    return BucketedRunner(model, encoder_inputs(2, 8), options(registry, **kw))


def assert_matches_eager(runner: BucketedRunner, model, batch: int, length: int, **inputs) -> None:
    inputs = inputs or encoder_inputs(batch, length, seed=batch * 100 + length)
    got = runner(**inputs)
    want = model(**inputs)
    assert got["tokens"].shape == (batch, length, 4)
    torch.testing.assert_close(got["tokens"], want["tokens"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["pooled"], want["pooled"], rtol=1e-4, atol=1e-5)


@pytest.fixture
def model():
    return TinyEncoder().eval().requires_grad_(False)


def test_pad_mask_slice_equals_eager_on_and_between_rungs(registry, model):
    runner = BucketedRunner(model, encoder_inputs(2, 8), options(registry))
    assert runner.num_graphs == 9
    assert all(not b.exact_dims for b in runner.status().buckets), str(runner.status())
    for batch in (1, 3, 4):
        for length in (1, 3, 4, 5, 8, 11, 16):
            assert_matches_eager(runner, model, batch, length)
    replays = {b: runner.runner(b).stats.num_replayed for b in runner.buckets}
    assert all(n > 0 for n in replays.values()), replays  # the graphs ran, not eager
    assert runner.stats.eager_fallback == {}


def test_mask_given_with_holes_and_mask_omitted(registry, model):
    runner = BucketedRunner(model, encoder_inputs(2, 8), options(registry))
    inputs = encoder_inputs(3, 6, seed=5)
    inputs["attention_mask"][1, 4:] = 0  # the caller's own padding inside the real length
    inputs["attention_mask"][2, 2] = 0
    assert_matches_eager(runner, model, 3, 6, **inputs)
    ids = encoder_inputs(2, 5, seed=6)["input_ids"]
    got = runner(input_ids=ids)  # the mask is built: ones on the real positions
    want = model(ids, torch.ones_like(ids))
    torch.testing.assert_close(got["pooled"], want["pooled"], rtol=1e-4, atol=1e-5)


def test_above_top_length_runs_eager_counted(registry, model):
    runner = BucketedRunner(model, encoder_inputs(2, 8), options(registry))
    assert_matches_eager(runner, model, 2, 20)
    ids = encoder_inputs(1, 18)["input_ids"]  # without its mask: eager gets one built
    torch.testing.assert_close(runner(input_ids=ids)["tokens"], model(ids, torch.ones_like(ids))["tokens"])
    assert runner.stats.eager_fallback == {CallFallback.ABOVE_TOP_RUNG: 2}
    assert runner.bucket_of({"input_ids": (2, 20)}) is None


def test_bucket_of_is_the_route_a_call_takes(registry, model):
    runner = BucketedRunner(model, encoder_inputs(2, 8), options(registry))
    assert runner.bucket_of({"input_ids": (3, 5)}) == Bucket((8,), 4)
    assert runner.bucket_of({"input_ids": (1, 16), "attention_mask": (1, 16)}) == Bucket((16,), 1)
    assert runner.bucket_of({"input_ids": (9, 2)}) == Bucket((4,), None)  # batch above the top: eager there
    with pytest.raises(GraphInputError, match="disagree"):
        runner.bucket_of({"input_ids": (1, 3), "attention_mask": (1, 4)})
    # a batcher pads each request to the bucket, stacks, runs, and slices rows and positions back
    a, b = encoder_inputs(1, 3, seed=1), encoder_inputs(1, 7, seed=2)
    bucket = runner.bucket_of({"input_ids": (2, 7)})
    assert bucket is not None
    pa, pb = runner.pad_to(a, bucket), runner.pad_to(b, bucket)
    stacked = {k: torch.cat([pa[k], pb[k]]) for k in pa}
    out = runner(**stacked)
    torch.testing.assert_close(out["pooled"][0], model(**a)["pooled"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["tokens"][1, :7], model(**b)["tokens"][0], rtol=1e-4, atol=1e-5)


def test_graph_budget_refused_naming_the_product(registry):
    with pytest.raises(ConfigError, match=r"3 batch rungs x 3 length rungs = 9 graphs > max_graphs=8"):
        build(registry, max_graphs=8)


def test_memory_budget_refused_before_allocation(registry):
    with pytest.raises(ConfigError, match="static buffers of 3 buckets x batch 4 need"):
        build(registry, budget=1024)


def test_not_padding_safe_along_length_falls_back_to_exact(registry):
    unsafe = TinyEncoder(honour_mask=False).eval().requires_grad_(False)
    runner = build(registry, model=unsafe)
    status = runner.status()
    assert all(b.exact_dims == ("length",) for b in status.buckets), str(status)
    assert "length 1 padded to 4" in str(status)
    for length in (4, 5, 8, 11):
        assert_matches_eager(runner, unsafe, 3, length)
    assert runner.runner((8,)).stats.num_replayed >= 1  # length 8 exactly still replays
    assert runner.stats.eager_fallback == {CallFallback.PADDING_MISMATCH: 2}  # 5 and 11


def test_without_verification_the_unsafe_model_is_wrong(registry):
    """The check above is what keeps it right: unverified, a padded length gives another answer."""
    unsafe = TinyEncoder(honour_mask=False).eval().requires_grad_(False)
    runner = build(registry, model=unsafe, verify=False)
    inputs = encoder_inputs(2, 5, seed=3)
    got, want = runner(**inputs)["pooled"], unsafe(**inputs)["pooled"]
    assert not torch.allclose(got, want, rtol=1e-3, atol=1e-4)


def test_length_histogram_in_metrics(registry, model):
    runner = BucketedRunner(model, encoder_inputs(2, 8), options(registry, name="enc"))
    for length in (3, 3, 9):
        runner(**encoder_inputs(1, length))
    text = generate_latest(registry).decode()
    assert 'graphrun_bucket_size_bucket{dim="length",le="3",runner="enc"} 2.0' in text
    assert 'graphrun_bucket_size_bucket{dim="length",le="9",runner="enc"} 3.0' in text
    assert 'graphrun_bucket_size_count{dim="batch",runner="enc"} 3.0' in text


def masked_image_sum(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, h, w) -> per-pixel (b, h, w) and a masked total (b,): two bucketed dims, one mask."""
    return x * 2 + 1, (x * mask).sum((1, 2))


def test_two_bucketed_dims_pad_both_and_slice_back(registry):
    dims = (BucketDim("h", {"x": 1, "mask": 1}, (2, 4)), BucketDim("w", {"x": 2, "mask": 2}, (3, 6)))
    runner_options = RunnerOptions(sizes=(1, 2), backend="sim", registry=registry)
    example = {"x": torch.randn(2, 4, 6), "mask": torch.ones(2, 4, 6)}
    runner = BucketedRunner(masked_image_sum, example, BucketOptions(dims, "mask", runner=runner_options))
    assert runner.num_graphs == 8
    for h, w in ((1, 1), (2, 3), (3, 5), (4, 6), (2, 6)):
        x = torch.randn(2, h, w)
        pixels, total = runner(x=x)
        want_pixels, want_total = masked_image_sum(x, torch.ones_like(x))
        torch.testing.assert_close(pixels, want_pixels)
        torch.testing.assert_close(total, want_total)
    assert runner.bucket_of({"x": (2, 3, 5)}) == Bucket((4, 6), 2)
