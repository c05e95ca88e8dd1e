"""Padded-size verification: a function whose rows depend on each other never replays padded batches.

Every batch size from 1 to the top rung must give the eager answer; a row-independent function must keep
its padded replays (no false positives).
"""

import logging

import pytest
import torch

from graphrun import CallFallback, CaptureFailure, FaultPlan, GraphRunner, SimBackend
from graphrun.errors import GraphInputError

TOP = 8


def batch_mean_removed(x):
    return x - x.mean(0, keepdim=True)


def batch_softmax(x):
    return torch.softmax(x, dim=0)


def batch_mean(x):  # an output without a batch dimension
    return x.mean(0)


def row_mlp(dtype=torch.float32):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    return net.to(dtype).eval().requires_grad_(False)


def build(fn, registry, **kw):
    kw.setdefault("max_batch_size", TOP)
    dtype = kw.pop("dtype", torch.float32)
    return GraphRunner(fn, (torch.randn(TOP, 16, dtype=dtype),), backend="sim", registry=registry, **kw)


@pytest.mark.parametrize("fn", [batch_mean_removed, batch_softmax, batch_mean], ids=lambda f: f.__name__)
def test_a_row_coupling_function_equals_eager_at_every_batch_size(registry, fn):
    r = build(fn, registry)
    status = {s.size: s for s in r.status()}
    for rung in (4, 8):  # they serve 3 (and 5-7) padded: mismatch found, exact-size calls only
        assert status[rung].captured and not status[rung].padded
        assert status[rung].reason is CaptureFailure.PADDING_MISMATCH
        assert "padded to" in status[rung].detail
    for n in range(1, TOP + 1):
        x = torch.randn(n, 16)
        torch.testing.assert_close(r(x), fn(x))
    assert r.stats.num_replayed == 4  # the rung sizes 1, 2, 4, 8
    assert r.stats.num_padded_rows == 0
    assert r.stats.eager_fallback == {CallFallback.PADDING_MISMATCH: 4}  # 3, 5, 6, 7


def test_batch_norm_in_training_equals_eager_from_batch_2(registry):
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(16).train()
    r = build(bn, registry)
    assert not any(s.padded for s in r.status())
    for n in range(2, TOP + 1):
        x = torch.randn(n, 16)
        torch.testing.assert_close(r(x), bn(x))
    # eager refuses a single row in training; so does the runner, instead of answering from padding
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        r(torch.randn(1, 16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_independent_function_keeps_its_padded_replays(registry, dtype):
    net = row_mlp(dtype)
    r = build(net, registry, dtype=dtype)
    assert all(s.captured and s.padded and s.reason is None for s in r.status())
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype]
    for n in range(1, TOP + 1):
        x = torch.randn(n, 16, dtype=dtype)
        torch.testing.assert_close(r(x), net(x), rtol=tol, atol=tol)
    assert r.stats.num_replayed == TOP and r.stats.eager_fallback == {}
    assert r.stats.num_padded_rows == 1 + 3 + 2 + 1  # 3 -> 4, 5/6/7 -> 8
    assert r.stats.capture_failed == {}


def test_the_mismatch_is_counted_once_per_rung_and_shown(registry, caplog):
    with caplog.at_level(logging.INFO, logger="graphrun.graphs.runner"):
        r = build(batch_mean_removed, registry, name="coupled")
    for n in (3, 5, 3, 7):
        r(torch.randn(n, 16))
    assert r.stats.capture_failed == {CaptureFailure.PADDING_MISMATCH: 2}  # rungs 4 and 8, not per call
    assert r.stats.eager_fallback == {CallFallback.PADDING_MISMATCH: 4}
    table = str(r.status())
    assert table.count("padding_mismatch") == 2 and "batch 3 padded to 4" in table
    (summary,) = [m for m in caplog.messages if "captured 4/4 graphs" in m]
    assert summary.endswith("exact-size only: 4 (padding_mismatch), 8 (padding_mismatch)")


def test_a_smaller_rung_that_failed_widens_the_interval_checked(registry):
    # rungs 1 and 2 fail to capture, so rung 4 serves batches 1, 2 and 3: its check starts at 1
    backend = SimBackend(FaultPlan(capture={1: RuntimeError("x"), 2: RuntimeError("y")}))
    seen = []

    def draw(n, gen):
        seen.append(n)
        return (torch.randn(n, 16, generator=gen),)

    r = GraphRunner(
        batch_mean_removed, (torch.randn(4, 16),), sizes=[1, 2, 4], backend=backend, registry=registry,
        verify_inputs=draw,
    )  # fmt: skip
    # its own size, then the smallest batch it serves (1: a repeated row hides the mean) and the middle
    assert seen == [4, 1, 2]
    assert r.status()[2].reason is CaptureFailure.PADDING_MISMATCH
    x = torch.randn(2, 16)
    torch.testing.assert_close(r(x), batch_mean_removed(x))
    assert r.stats.eager_fallback == {CallFallback.PADDING_MISMATCH: 1}


def test_verify_inputs_is_called_with_the_padded_batch_sizes(registry):
    table = torch.randn(10, 3)
    seen = []

    def draw(n, gen):
        seen.append(n)
        return (torch.randint(0, 10, (n,), generator=gen),)

    r = GraphRunner(
        lambda ids: table[ids], (torch.tensor([0, 9]),), sizes=[1, 2, 4, 8], backend="sim",
        registry=registry, verify_inputs=draw,
    )  # fmt: skip
    assert all(s.padded for s in r.status())
    # own sizes 1, 2, 4, 8; padded: 3 for rung 4, then 5 (smallest) and 6 (middle of 5..7) for rung 8
    assert sorted(seen) == [1, 2, 3, 4, 5, 6, 8]


def test_verify_false_skips_the_padded_check(registry):
    r = build(batch_mean_removed, registry, verify=False)
    assert all(s.padded for s in r.status()) and r.stats.capture_failed == {}
    r(torch.randn(3, 16))
    assert r.stats.num_padded_rows == 1  # replayed padded: verify=False trusts rows to be independent


def test_pad_forbid_replays_exact_sizes_only(registry, caplog):
    net = row_mlp()
    with caplog.at_level(logging.INFO, logger="graphrun.graphs.runner"):
        r = build(net, registry, pad="forbid")
    assert all(s.captured and not s.padded and s.reason is None for s in r.status())
    assert "no (forbid)" in str(r.status())
    assert any(m.endswith("exact-size only: all (pad='forbid')") for m in caplog.messages)
    for n in range(1, TOP + 1):
        x = torch.randn(n, 16)
        torch.testing.assert_close(r(x), net(x))
    assert r.stats.num_replayed == 4 and r.stats.num_padded_rows == 0
    assert r.stats.eager_fallback == {CallFallback.PADDING_FORBIDDEN: 4}
    assert r.rung_for(3) is None and r.rung_for(4) == 4
    with pytest.raises(GraphInputError, match="padding_forbidden"):
        r.static_inputs(3)


def test_an_exact_size_rung_sends_padded_batches_to_the_next_rung_that_pads(registry):
    def coupled_at_4(x):  # rows depend on each other at batch 4 only
        return x * 2 + (x.mean(0) - x[-1]) * (x.shape[0] == 4)

    r = GraphRunner(coupled_at_4, (torch.randn(8, 2),), sizes=[2, 4, 8], backend="sim", registry=registry)
    status = {s.size: s for s in r.status()}
    assert not status[4].padded and status[8].padded
    assert r.rung_for(3) == 8 and r.rung_for(4) == 4
    for n in (3, 4):
        x = torch.randn(n, 2)
        torch.testing.assert_close(r(x), coupled_at_4(x))
    assert r.stats.num_replayed == 2 and r.stats.num_padded_rows == 5  # 3 went to rung 8


def centred_codes(x):  # integer output computed from a batch mean: coupled
    return (x - x.mean(0)).sum(-1).mul(100).round().long()


def parity_codes(x):  # integer output that moves with the batch size alone, as a kernel choice can
    return x.sum(-1).mul(100).round().long() + x.shape[0] % 2


@pytest.mark.parametrize("pad", ["repeat", 0.0])
def test_an_integer_output_of_a_coupled_function_is_caught(registry, pad):
    r = GraphRunner(centred_codes, (torch.randn(8, 4),), sizes=[1, 2, 4, 8], backend="sim", registry=registry,
                    pad=pad, name=f"codes-{pad}")  # fmt: skip
    assert [s.padded for s in r.status()] == [True, True, False, False]
    for n in range(1, 9):
        x = torch.randn(n, 4)
        assert torch.equal(r(x), centred_codes(x))


def test_integer_outputs_that_move_with_the_shape_only_keep_padding(registry):
    # like an argmax flipped by another kernel's rounding at another batch size: the padding rows do not
    # change the real rows when the graph replays, so the difference from eager is not coupling
    r = GraphRunner(parity_codes, (torch.randn(8, 4),), sizes=[1, 2, 4, 8], backend="sim", registry=registry)
    assert all(s.padded for s in r.status())
    # without pad="repeat" there is no second padding to compare: every fresh draw differs, so it counts
    strict = GraphRunner(parity_codes, (torch.randn(8, 4),), sizes=[1, 2, 4, 8], backend="sim",
                         registry=registry, pad=0.0, name="strict")  # fmt: skip
    assert [s.padded for s in strict.status()] == [True, True, False, False]


def test_an_integer_flip_that_a_fresh_draw_does_not_repeat_keeps_padding(registry):
    eager_calls = {3: 0}

    def flips_once_at_3(x):  # eager's first run at batch 3 differs, as a rare rounding flip would
        out = x.sum(-1).mul(100).round().long()
        if x.shape[0] == 3:
            eager_calls[3] += 1
            if eager_calls[3] == 1:
                out = out + 1
        return out

    r = GraphRunner(flips_once_at_3, (torch.randn(4, 4),), sizes=[2, 4], backend="sim", registry=registry,
                    pad=0.0)  # fmt: skip
    assert eager_calls[3] == 2  # one redraw
    assert all(s.padded for s in r.status())


def test_verify_inputs_that_ignore_the_batch_size_are_named(registry):
    def rung_sized_only(n, gen):
        return (torch.randn(4, 16, generator=gen),)  # ignores n: wrong for the padded check

    r = GraphRunner(row_mlp(), (torch.randn(4, 16),), sizes=[2, 4], backend="sim", registry=registry,
                    verify_inputs=rung_sized_only)  # fmt: skip
    status = {s.size: s for s in r.status()}
    assert (
        not status[2].captured and "verify_inputs(2, generator) gave args[0] a batch of 4" in status[2].detail
    )
    assert status[4].captured
