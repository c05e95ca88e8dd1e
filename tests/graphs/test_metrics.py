"""Prometheus series: names from DESIGN.md, bounded labels, values that follow the runner."""

import pytest
import torch
from prometheus_client import generate_latest

from graphrun import FaultPlan, GraphRunner, SimBackend
from graphrun.errors import ConfigError
from graphrun.graphs.metrics import MAX_RUNNERS
from metric_value import value


def test_metric_values_follow_calls(registry):
    backend = SimBackend(FaultPlan(capture={2: torch.OutOfMemoryError("oom")}))
    r = GraphRunner(
        lambda x: x + 1, (torch.randn(4, 2),), sizes=[1, 2, 4], backend=backend, registry=registry, name="m"
    )
    r(torch.randn(1, 2))
    r(torch.randn(3, 2))  # padded 3 -> 4
    r(torch.randn(9, 2))  # above the top rung
    assert value(registry, "graphrun_cuda_graph_captured_total", runner="m") == 2
    assert value(registry, "graphrun_cuda_graph_replayed_total", runner="m") == 2
    assert value(registry, "graphrun_cuda_graph_capture_failed_at_init_total", runner="m", reason="oom") == 1
    assert (
        value(registry, "graphrun_cuda_graph_eager_fallback_total", runner="m", reason="above_top_rung") == 1
    )
    assert value(registry, "graphrun_cuda_graph_padding_ratio", runner="m") == pytest.approx(1 / 5)
    assert value(registry, "graphrun_cuda_graph_replay_seconds_count", runner="m") == 2
    assert value(registry, "graphrun_cuda_graph_capture_seconds", runner="m") > 0


def test_every_reason_is_exported_even_at_zero(registry):
    runner = GraphRunner(
        lambda x: x + 1, (torch.randn(2, 2),), sizes=[2], backend="sim", registry=registry, name="z"
    )
    text = generate_latest(registry).decode()  # a runner's series live as long as the runner does
    assert runner.name == "z"
    for reason in (
        "oom",
        "host_sync",
        "uncapturable_op",
        "verification_mismatch",
        "memory_budget",
        "padding_mismatch",
    ):
        assert f'graphrun_cuda_graph_capture_failed_at_init_total{{reason="{reason}",runner="z"}} 0.0' in text
    for reason in ("replay_error", "padding_mismatch", "padding_forbidden"):
        assert f'graphrun_cuda_graph_eager_fallback_total{{reason="{reason}",runner="z"}} 0.0' in text


def test_runner_names_are_unique_and_bounded(registry):
    def f(x):
        return x * 3

    a = GraphRunner(f, (torch.randn(1, 2),), sizes=[1], backend="sim", registry=registry)
    b = GraphRunner(f, (torch.randn(1, 2),), sizes=[1], backend="sim", registry=registry)
    assert (a.name, b.name) == ("f", "f-2")
    with pytest.raises(ConfigError, match="already registered"):
        GraphRunner(f, (torch.randn(1, 2),), sizes=[1], backend="sim", registry=registry, name="f")
    keep = [
        GraphRunner(
            f, (torch.randn(1, 2),), sizes=[1], backend="sim", registry=registry, verify=False, capture=False
        )
        for _ in range(MAX_RUNNERS - 2)
    ]
    with pytest.raises(ConfigError, match="bounded"):
        GraphRunner(f, (torch.randn(1, 2),), sizes=[1], backend="sim", registry=registry, capture=False)
    assert len(keep) == MAX_RUNNERS - 2


def test_a_collected_runner_leaves_the_registry(registry):
    import gc

    r = GraphRunner(
        lambda x: x, (torch.randn(1, 2),), sizes=[1], backend="sim", registry=registry, name="gone"
    )
    assert value(registry, "graphrun_cuda_graph_captured_total", runner="gone") == 1
    del r
    gc.collect()
    assert registry.get_sample_value("graphrun_cuda_graph_captured_total", {"runner": "gone"}) is None


def test_padding_mismatch_is_counted_per_rung_at_capture_and_per_call_after(registry):
    r = GraphRunner(
        lambda x: x - x.mean(0), (torch.randn(8, 2),), sizes=[1, 2, 4, 8], backend="sim", registry=registry,
        name="coupled",
    )  # fmt: skip
    for n in (3, 5, 6):
        r(torch.randn(n, 2))
    labels = {"runner": "coupled", "reason": "padding_mismatch"}
    assert value(registry, "graphrun_cuda_graph_capture_failed_at_init_total", **labels) == 2  # rungs 4, 8
    assert value(registry, "graphrun_cuda_graph_eager_fallback_total", **labels) == 3
    assert value(registry, "graphrun_cuda_graph_captured_total", runner="coupled") == 4  # still captured


def test_runner_labels_are_added_to_its_series_and_bounded(registry):
    from graphrun.graphs.metrics import collector_for

    kept = [  # a runner's series live as long as the runner does
        GraphRunner(torch.neg, (torch.randn(1, 2),), sizes=[1], backend="sim", registry=registry, name=n)
        for n in "st"
    ]
    collector = collector_for(registry)
    collector.label_runner("s", {"stage": "prefix", "model": "m"})
    labelled = {"runner": "s", "stage": "prefix", "model": "m"}
    assert value(registry, "graphrun_cuda_graph_captured_total", **labelled) == 1
    assert value(registry, "graphrun_cuda_graph_replay_seconds_count", **labelled) == 0
    assert registry.get_sample_value("graphrun_cuda_graph_captured_total", {"runner": "t"}) == 1  # unlabelled
    with pytest.raises(ConfigError, match="runner labels may be"):
        collector.label_runner("s", {"pod": "x"})
    with pytest.raises(ConfigError, match="no runner named"):
        collector.label_runner("nope", {"stage": "a"})
    assert len(kept) == 2
