"""/metrics always carries the graph series and says whether graphs are on, and if not, why.

A dashboard built against a laptop's server (no CUDA: `auto` decodes eager) must find the same series
on a GPU host. These tests scrape a real CPU server (serve_harness.py).
"""

from __future__ import annotations

import pytest
import torch
from serve_harness import LiveServer, live_server

from graphrun.llm.graph_state import ENGINE_RUNNER_NAMES

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the default CPU server")
SERIES = (
    "graphrun_cuda_graph_captured_total",
    "graphrun_cuda_graph_replayed_total",
    "graphrun_cuda_graph_capture_seconds",
    "graphrun_cuda_graph_padding_ratio",
    "graphrun_cuda_graph_replay_seconds_count",
)


def graph_series(srv: LiveServer, runner: str) -> dict[str, float]:
    values = {name: srv.metric(name, f'runner="{runner}"') for name in SERIES}
    for reason in ("rung_not_captured", "above_top_rung"):
        labels = f'reason="{reason}",runner="{runner}"'
        values[f"eager_fallback_total {reason}"] = srv.metric(
            "graphrun_cuda_graph_eager_fallback_total", labels
        )
    return values


@no_cuda
@pytest.mark.parametrize("engine_process", [False, True], ids=["engine-thread", "engine-process"])
def test_default_cpu_server_exposes_zero_graph_series_and_says_why_graphs_are_off(engine_process):
    with live_server(engine={"graph_backend": "auto"}, engine_process=engine_process) as srv:
        assert srv.metric("graphrun_cuda_graphs_enabled", 'backend="none",reason="no_cuda_device"') == 0
        for runner in ENGINE_RUNNER_NAMES:
            assert set(graph_series(srv, runner).values()) == {0.0}, runner
        assert "graphrun_cuda_graphs_enabled{" in srv.metrics()
        assert srv.metrics().count("graphrun_cuda_graphs_enabled{") == 1  # one state, not one per reason


def test_enforce_eager_is_the_reason_shown():
    with live_server(engine={"graph_backend": "sim", "enforce_eager": True}) as srv:
        assert srv.metric("graphrun_cuda_graphs_enabled", 'backend="none",reason="enforce_eager"') == 0
        assert srv.metric("graphrun_cuda_graph_captured_total", 'runner="decode-greedy"') == 0


def test_graphs_on_show_enabled_and_a_runner_not_built_still_has_its_series():
    engine = {"graph_backend": "sim", "cuda_graph_max_prefill_tokens": 0}  # prefill graphs off
    with live_server(engine=engine) as srv:
        assert srv.metric("graphrun_cuda_graphs_enabled", 'backend="sim",reason="none"') == 1
        assert srv.metric("graphrun_cuda_graph_captured_total", 'runner="decode-greedy"') > 0
        assert set(graph_series(srv, "prefill").values()) == {0.0}
