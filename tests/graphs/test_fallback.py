"""Fallback is never silent: every eager rung and every eager call is counted and explained."""

import logging

import pytest
import torch

from graphrun import CallFallback, CaptureFailure, FaultPlan, GraphRunner, SimBackend


def double(x):
    return x * 2 + 1


def build(registry, backend=None, **kw):
    kw.setdefault("sizes", [1, 2, 4, 8])
    return GraphRunner(double, (torch.randn(8, 3),), backend=backend or SimBackend(), registry=registry, **kw)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), CaptureFailure.OOM),
        (
            RuntimeError("CUDA error: operation not permitted when stream is capturing"),
            CaptureFailure.HOST_SYNC,
        ),
        (
            RuntimeError("cudaErrorStreamCaptureUnsupported: operation not supported during capture"),
            CaptureFailure.UNCAPTURABLE_OP,
        ),
        (ValueError("something else broke"), CaptureFailure.ERROR),
    ],
    ids=["oom", "host_sync", "uncapturable", "other"],
)
def test_capture_failure_makes_that_rung_eager_for_life(registry, caplog, exc, reason):
    backend = SimBackend(FaultPlan(capture={4: exc}))
    with caplog.at_level(logging.WARNING):
        r = build(registry, backend)
    status = {s.size: s for s in r.status()}
    assert not status[4].captured and status[4].reason is reason
    assert all(status[s].captured for s in (1, 2, 8))
    assert r.stats.capture_failed == {reason: 1}
    assert any("batch size 4 runs eager" in m for m in caplog.messages)
    # a batch of 3 would have used rung 4: it goes to the next captured rung (8), still a graph
    x = torch.randn(3, 3)
    torch.testing.assert_close(r(x), double(x))
    assert r.stats.num_padded_rows == 5
    r(torch.randn(4, 3))
    assert r.stats.capture_failed == {reason: 1}  # counted once, not per call


def test_top_rung_failure_sends_its_calls_eager(registry):
    r = build(registry, SimBackend(FaultPlan(capture={8: torch.OutOfMemoryError("oom")})))
    x = torch.randn(6, 3)
    torch.testing.assert_close(r(x), double(x))
    assert r.stats.eager_fallback == {CallFallback.RUNG_NOT_CAPTURED: 1}
    assert r.stats.num_replayed == 0


def test_batch_above_top_rung_runs_eager_and_is_counted(registry):
    r = build(registry)
    x = torch.randn(11, 3)
    torch.testing.assert_close(r(x), double(x))
    assert r.stats.eager_fallback == {CallFallback.ABOVE_TOP_RUNG: 1}


def test_replay_failure_during_verification_makes_the_rung_eager(registry):
    r = build(registry, SimBackend(FaultPlan(replay={2: RuntimeError("illegal memory access")})))
    status = {s.size: s for s in r.status()}
    assert status[2].reason is CaptureFailure.VERIFICATION and "illegal memory access" in status[2].detail


def test_replay_failure_runs_that_call_eager(registry, caplog):
    backend = SimBackend(FaultPlan(replay={2: RuntimeError("illegal memory access")}))
    r = build(registry, backend, verify=False)
    x = torch.randn(2, 3)
    with caplog.at_level(logging.WARNING):
        torch.testing.assert_close(r(x), double(x))
        torch.testing.assert_close(r(x), double(x))
    assert r.stats.eager_fallback == {CallFallback.REPLAY_ERROR: 2}
    assert any("replay of rung 2 failed" in m for m in caplog.messages)
    r(torch.randn(1, 3))
    assert r.stats.num_replayed == 1


def test_host_sync_in_the_model_is_caught_at_capture(registry):
    def bad(x):
        scale = x.abs().max().item()  # a host sync: cannot be captured
        return x / scale

    r = GraphRunner(bad, (torch.randn(4, 3),), sizes=[2, 4], backend="sim", registry=registry)
    assert {s.reason for s in r.status()} == {CaptureFailure.HOST_SYNC}
    x = torch.randn(4, 3)
    torch.testing.assert_close(r(x), bad(x))
    assert r.stats.eager_fallback == {CallFallback.RUNG_NOT_CAPTURED: 1}


def test_verification_catches_a_frozen_branch(registry):
    class Alternating(torch.nn.Module):
        """Python state decides the path: capture freezes one path, eager keeps alternating."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return x * 2 if self.calls % 2 else x - 5

    r = GraphRunner(Alternating(), (torch.randn(2, 3),), sizes=[2], backend="sim", registry=registry)
    (status,) = r.status()
    assert not status.captured and status.reason is CaptureFailure.VERIFICATION
    assert "differ" in status.detail or "max abs diff" in status.detail
    assert r.stats.capture_failed == {CaptureFailure.VERIFICATION: 1}


def test_verification_off_keeps_a_frozen_branch_captured(registry):
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        return x * 2 if calls["n"] % 2 else x - 5

    r = GraphRunner(flaky, (torch.randn(2, 3),), sizes=[2], backend="sim", registry=registry, verify=False)
    assert r.status()[0].captured


def test_memory_budget_skips_rungs_that_would_exceed_it(registry):
    def wide(x):
        return (x.repeat(1, 64) * 3).sum(-1)  # intermediates scale with the batch

    x = torch.randn(8, 256)
    probe = GraphRunner(wide, (x,), sizes=[1, 2, 4, 8], backend="sim", registry=registry, name="probe")
    per_row = {s.size: s.nbytes for s in probe.status()}
    # largest first: 8 alone must not fit, then 4, 2 and 1 together must
    budget = (per_row[1] + per_row[2] + per_row[4] + per_row[8]) // 2
    assert per_row[8] > budget >= per_row[1] + per_row[2] + per_row[4]
    r = GraphRunner(
        wide,
        (x,),
        sizes=[1, 2, 4, 8],
        backend="sim",
        registry=registry,
        memory_budget_bytes=budget,
        name="budgeted",
    )
    status = {s.size: s for s in r.status()}
    assert status[8].reason is CaptureFailure.MEMORY_BUDGET and "budget" in status[8].detail
    assert all(status[s].captured for s in (1, 2, 4))
    assert r.backend.pool_bytes() <= budget


def test_output_shape_that_does_not_follow_the_batch_is_caught(registry):
    def odd(x):
        return x[:1] if x.shape[0] < 4 else x  # frozen shape logic that breaks the static outputs

    r = GraphRunner(odd, (torch.randn(4, 2),), sizes=[2, 4], backend="sim", registry=registry)
    status = {s.size: s for s in r.status()}
    assert status[4].captured
    assert status[2].reason is CaptureFailure.OUTPUT_SHAPE


def test_wrapped_errors_are_classified_by_their_root_cause(registry):
    from graphrun.graphs.capture import classify, root_cause

    assert classify(RuntimeError("operation failed due to a previous error during capture")) is (
        CaptureFailure.UNCAPTURABLE_OP
    )
    try:
        try:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        except RuntimeError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")  # noqa: B904
    except RuntimeError as outer:
        chained = outer
    assert classify(chained) is CaptureFailure.HOST_SYNC
    assert "not permitted" in str(root_cause(chained))
