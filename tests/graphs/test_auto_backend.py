"""`auto` means one thing for GraphRunner and for the engine behind `graphrun serve --graph-backend auto`:
CUDA graphs for CUDA tensors, no graphs (every call eager, counted) anywhere else; the simulator only when
named."""

from __future__ import annotations

import pytest
import torch

from graphrun import CaptureFailure, GraphRunner
from graphrun.graphs.backends import make_backend, resolve_backend_name
from graphrun.graphs.status import CallFallback
from graphrun.llm.engine_config import EngineConfig, GraphsOff

CPU = torch.device("cpu")


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()


def test_auto_on_cpu_tensors_is_eager_for_the_runner_and_the_engine():
    runner_pick = make_backend("auto", CPU).name
    engine_pick = EngineConfig(graph_backend="auto").graph_backend_for(CPU)
    assert runner_pick == resolve_backend_name("auto", CPU) == "eager"
    assert engine_pick is None  # the engine's word for "no graphs": decode runs eager
    assert EngineConfig(graph_backend="auto").graphs_off(CPU) is GraphsOff.NO_CUDA_DEVICE


def test_named_backends_mean_themselves_on_both_sides():
    assert make_backend("sim", CPU).name == "sim"
    assert EngineConfig(graph_backend="sim").graph_backend_for(CPU) == "sim"
    assert EngineConfig(graph_backend="sim").graphs_off(CPU) is None


def test_auto_runner_on_cpu_captures_nothing_and_counts_every_eager_call(registry):
    net = mlp()
    with torch.inference_mode():
        runner = GraphRunner(net, (torch.randn(4, 8),), sizes=[1, 2, 4], registry=registry)
        statuses = runner.status()
        assert [s.size for s in statuses] == [1, 2, 4]
        assert all(not s.captured and s.reason is CaptureFailure.NO_GRAPH_BACKEND for s in statuses)
        assert "backend='sim' simulates them" in statuses[0].detail
        x = torch.randn(3, 8)
        torch.testing.assert_close(runner(x), net(x))
    assert runner.stats.num_replayed == 0 and runner.stats.num_captured == 0
    assert runner.stats.eager_fallback == {CallFallback.RUNG_NOT_CAPTURED: 1}
    assert runner.stats.capture_failed == {CaptureFailure.NO_GRAPH_BACKEND: 3}
    assert (
        registry.get_sample_value(
            "graphrun_cuda_graph_capture_failed_at_init_total",
            {"runner": runner.name, "reason": "no_graph_backend"},
        )
        == 3
    )


@pytest.mark.gpu
def test_auto_on_cuda_tensors_is_cuda_for_both():
    device = torch.device("cuda")
    assert make_backend("auto", device).name == "cuda"
    assert EngineConfig(graph_backend="auto").graph_backend_for(device) == "cuda"
    assert make_backend("auto", CPU).name == "eager"  # CPU tensors on a GPU host: still no graphs
