"""GraphRunner(mode=...): each mode captures what it says, and routes each call and descriptor."""

import pytest
import torch
from prometheus_client import CollectorRegistry
from torch import nn

from graphrun import BatchDescriptor, GraphRunner
from graphrun.errors import ConfigError
from graphrun.graphs.modes import Route, RouteKind
from graphrun.graphs.status import CallFallback, CaptureFailure


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Syncing(MLP):
    """Reads a scalar on the host: FULL capture fails at every rung, PIECEWISE splits there."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) * (1.0 + h.abs().amax().item())  # max: padding rows repeat, so it holds


def runner(model, mode):
    return GraphRunner(
        model.eval(),
        (torch.randn(4, 8),),
        sizes=[1, 2, 4],
        backend="sim",
        mode=mode,
        registry=CollectorRegistry(),
    )


def test_mode_none_runs_every_call_eager_and_says_so():
    run = runner(MLP(), "none")
    assert {r.reason for r in run.status()} == {CaptureFailure.MODE_NONE}
    assert "none" in str(run.status())
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(run(x), run.fn(x))
    assert run.stats.eager_fallback == {CallFallback.MODE_NONE: 1}
    assert run.route(BatchDescriptor(3)) == Route(RouteKind.EAGER)


@pytest.mark.parametrize(
    ("mode", "tokens", "uniform", "expected"),
    [
        ("full", 3, True, Route(RouteKind.FULL, 4)),
        ("full", 3, False, Route(RouteKind.EAGER)),
        ("full", 5, True, Route(RouteKind.EAGER)),
        ("piecewise", 3, True, Route(RouteKind.PIECEWISE, 4)),
        ("piecewise", 3, False, Route(RouteKind.PIECEWISE, 4)),
        ("piecewise", 5, True, Route(RouteKind.EAGER)),
        ("full_and_piecewise", 1, True, Route(RouteKind.FULL, 1)),
        ("full_and_piecewise", 3, False, Route(RouteKind.PIECEWISE, 4)),
        ("full_and_piecewise", 5, False, Route(RouteKind.EAGER)),
    ],
)
def test_each_mode_routes_each_descriptor(mode, tokens, uniform, expected):
    assert runner(MLP(), mode).route(BatchDescriptor(tokens, uniform)) == expected


def test_call_batch_follows_the_route():
    run = runner(MLP(), "full_and_piecewise")
    piecewise = run.piecewise
    assert piecewise is not None and piecewise.status().mode == "piecewise"
    x = torch.randn(3, 8)
    with torch.no_grad():
        want = run.fn(x)
        torch.testing.assert_close(run.call_batch(BatchDescriptor(3, uniform=True), x), want)
        assert (run.stats.num_replayed, piecewise.stats.num_replayed) == (1, 0)
        torch.testing.assert_close(run.call_batch(BatchDescriptor(3, uniform=False), x), want)
        assert (run.stats.num_replayed, piecewise.stats.num_replayed) == (1, 1)
        run.call_batch(BatchDescriptor(5), torch.randn(5, 8))
    assert run.stats.eager_fallback == {CallFallback.ABOVE_TOP_RUNG: 1}


def test_full_and_piecewise_takes_piecewise_where_full_failed():
    torch.manual_seed(0)
    model = Syncing()
    run = runner(model, "full_and_piecewise")
    assert {r.reason for r in run.status()} == {CaptureFailure.HOST_SYNC}
    assert run.piecewise is not None and all(r.captured for r in run.piecewise.status())
    assert run.route(BatchDescriptor(2)) == Route(RouteKind.PIECEWISE, 2)
    with torch.no_grad():
        for n in (1, 2, 3, 4):
            x = torch.randn(n, 8)
            torch.testing.assert_close(run(x), model(x))
    assert run.piecewise.stats.num_replayed == 4
    assert run.piecewise.stats.num_captured == 3
    assert run.stats.eager_fallback == {}


def test_a_bad_mode_names_the_valid_ones():
    with pytest.raises(ConfigError, match="full_and_piecewise"):
        runner(MLP(), "partial")
