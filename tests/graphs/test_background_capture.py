"""GraphRunner(capture="background"): calls run eager until their rung lands, then replay; outputs never
change, several threads calling all along; pending rungs in status, a metric and wait_captured()."""

import threading

import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest
from torch import nn

from graphrun import GraphRunner
from graphrun.errors import ConfigError
from graphrun.graphs.backends import FaultPlan, SimBackend
from graphrun.graphs.options import CaptureWhen, RunnerOptions
from graphrun.graphs.status import CallFallback, CaptureFailure

SIZES = [1, 2, 4, 8]


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4)).eval()
    return net.requires_grad_(False)


def background_runner(fn, registry, **kw):
    kw.setdefault("backend", "sim")
    kw.setdefault("capture", "background")
    return GraphRunner(fn, (torch.randn(8, 8),), sizes=SIZES, registry=registry, **kw)


def test_capture_option_reads_booleans_and_names():
    assert RunnerOptions(capture=True).capture_when is CaptureWhen.NOW
    assert RunnerOptions(capture=False).capture_when is CaptureWhen.LATER
    assert RunnerOptions(capture="background").capture_when is CaptureWhen.BACKGROUND
    with pytest.raises(ConfigError, match="background"):
        RunnerOptions(capture="soon")


def test_a_driven_pass_switches_rung_by_rung_largest_first_with_outputs_unchanged(registry):
    net = make_mlp()
    run = background_runner(net, registry, clone_outputs=True)
    run.start_background_capture(thread=False)  # the same pass, driven by hand: deterministic
    assert run.pending_rungs == (8, 4, 2, 1)
    assert run.status().num_pending == 4 and "pending [8, 4, 2, 1]" in str(run.status())
    assert not run.wait_captured(0)
    xs = {n: torch.randn(n, 8) for n in range(1, 9)}
    with torch.no_grad():
        want = {n: net(x) for n, x in xs.items()}
    for rung in (8, 4, 2, 1):
        eager_before = run.stats.eager_fallback.get(CallFallback.CAPTURING, 0)
        assert run.rung_for(rung) != rung  # not its own graph yet
        assert run.capture_step()
        assert run.rung_for(rung) == rung  # ... and now it is
        assert rung not in run.pending_rungs
        replayed = run.stats.num_replayed
        for n, x in xs.items():
            torch.testing.assert_close(run(x), want[n])  # padded: equal to float rounding
        # every batch at or below the newest rung replays; none runs eager for `capturing` any more
        assert run.stats.num_replayed - replayed == 8
        assert run.stats.eager_fallback.get(CallFallback.CAPTURING, 0) == eager_before
    assert not run.capture_step()
    assert run.wait_captured(0) and run.pending_rungs == ()
    assert [s.size for s in run.status() if s.captured and s.padded] == SIZES


def test_calls_before_any_rung_lands_run_eager_counted_as_capturing(registry):
    net = make_mlp()
    run = background_runner(net, registry, capture="later")
    run.start_background_capture(thread=False)
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(run(x), net(x))
    assert run.stats.eager_fallback == {CallFallback.CAPTURING: 1}
    text = generate_latest(registry).decode()
    assert 'graphrun_cuda_graph_pending_rungs{runner="' in text and "} 4.0" in text
    while run.capture_step():
        pass
    assert "} 0.0" in generate_latest(registry).decode().split("pending_rungs{")[1].split("\n")[0]


def test_the_thread_switches_rungs_while_threads_call_and_every_output_equals_eager(registry):
    net = make_mlp()
    gate = threading.Event()
    calls_done = [0]

    def slow(x):  # a callable whose capture takes long enough for calls to interleave with it
        gate.wait(5)
        for _ in range(20):
            x = x + 0.0
        return net(x)

    run = background_runner(slow, registry, clone_outputs=True)
    errors: list[BaseException] = []
    mismatches: list[int] = []

    def caller(seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        try:
            while not run.wait_captured(0) or calls_done[0] < 200:
                n = int(torch.randint(1, 9, (1,), generator=gen))
                x = torch.randn(n, 8, generator=gen)
                with torch.no_grad():
                    want = net(x)
                if not torch.allclose(run(x), want, rtol=1e-5, atol=1e-6):
                    mismatches.append(n)
                calls_done[0] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    gate.set()
    assert run.wait_captured(60)
    for t in threads:
        t.join(60)
    assert errors == [] and mismatches == []
    assert [s.size for s in run.status() if s.captured] == SIZES
    assert run.stats.eager_fallback.get(CallFallback.CAPTURING, 0) > 0  # eager while capturing
    assert run.stats.num_replayed > 0  # ... then replays


def test_a_call_meeting_a_capture_in_progress_runs_eager_instead_of_waiting(registry):
    net = make_mlp()
    result: list[torch.Tensor] = []
    probe = {"armed": False}

    def fn(x):
        if probe["armed"]:  # inside the capture of rung 4, which holds the call lock
            probe["armed"] = False
            caller = threading.Thread(target=lambda: result.append(run(torch.ones(8, 8))))
            caller.start()
            caller.join(5)  # a call that waited for the lock would never finish here
        return net(x)

    run = background_runner(fn, registry, capture="later")
    run.start_background_capture(thread=False)
    run.capture_step()  # rung 8 lands
    probe["armed"] = True
    run.capture_step()  # rung 4: its warm-up makes a call of 8 rows while the lock is held
    assert len(result) == 1
    with torch.no_grad():
        torch.testing.assert_close(result[0], net(torch.ones(8, 8)))
    assert run.stats.eager_fallback == {CallFallback.CAPTURING: 1}


def test_a_rung_that_fails_in_the_background_stays_eager_and_the_others_land(registry):
    net = make_mlp()
    backend = SimBackend(FaultPlan(capture={4: torch.OutOfMemoryError("CUDA out of memory")}))
    run = background_runner(net, registry, backend=backend)
    assert run.wait_captured(30)
    status = {s.size: s for s in run.status()}
    assert status[4].reason is CaptureFailure.OOM and not status[4].captured
    assert all(status[r].captured for r in (1, 2, 8))
    x = torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(run(x), net(x))
    assert run.rung_for(4) == 8  # padded up to the next rung that landed


def test_full_and_piecewise_captures_its_piecewise_rungs_after_the_full_ones(registry):
    net = make_mlp()
    run = background_runner(net, registry, mode="full_and_piecewise")
    assert run.wait_captured(60)
    assert run.piecewise is not None
    assert all(s.captured for s in run.status()) and all(s.captured for s in run.piecewise.status())
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(run(x), net(x))


def test_close_stops_the_thread_and_capture_restarts_a_full_pass(registry):
    run = background_runner(make_mlp(), registry)
    run.close()
    assert run.wait_captured(0) and run.pending_rungs == ()
    status = run.capture()  # synchronous, whatever the option said
    assert [s.size for s in status if s.captured] == SIZES


def test_separate_registries_do_not_share_runner_names():
    a = background_runner(make_mlp(), CollectorRegistry(), name="same")
    b = background_runner(make_mlp(), CollectorRegistry(), name="same")
    assert a.wait_captured(30) and b.wait_captured(30)


def test_a_rung_whose_checks_raise_is_recorded_eager_and_the_pass_goes_on(registry):
    net = make_mlp()

    def inputs(n, gen):
        if n == 1:  # every padded check (each rung serves 1 until rung 1 lands) and rung 1's own check
            raise ValueError("no inputs of 1 row")
        return (torch.randn(n, 8, generator=gen),)

    run = background_runner(net, registry, capture="later", verify_inputs=inputs)
    run.start_background_capture(thread=False)
    while run.capture_step():
        pass
    assert run.wait_captured(0) and run.pending_rungs == ()
    assert [(s.captured, s.reason) for s in run.status()] == [(False, CaptureFailure.ERROR)] * 4
    x = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(run(x), net(x))
    assert run.stats.eager_fallback == {CallFallback.RUNG_NOT_CAPTURED: 1}
