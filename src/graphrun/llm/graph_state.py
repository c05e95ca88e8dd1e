"""The engine's graph state on /metrics: whether decode runs through graphs and, when it does not, why.

A dashboard built against a laptop's server (no CUDA: graphs off) must find the same series on a GPU
host, and the other way round. So the `graphrun_cuda_graph_*` series of every runner the engine can
own are always there, at zero for a runner that was never built (graphs off, prefill graphs turned
off, or the structured decode kinds before the first structured step), and one gauge says what
happened: `graphrun_cuda_graphs_enabled{backend, reason}` is 1 with reason "none" when decode graphs
are on, 0 with the reason (engine_config.GraphsOff) when they are off.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from graphrun.graphs.metrics import collector_for
from graphrun.graphs.status import RunnerStats
from graphrun.llm.engine_config import GraphsOff

# every GraphRunner an engine may build (decode_graph.py, prefill_graph.py, piecewise_graph.py)
ENGINE_RUNNER_NAMES = (
    "decode-sampling", "decode-greedy", "decode-logprobs", "decode-structured", "decode-mask-greedy",
    "decode-mask-sampling", "prefill", "piecewise",
)  # fmt: skip


def publish_graph_state(registry: CollectorRegistry, backend: str | None, off: GraphsOff | None) -> None:
    """Set the enabled gauge and give every runner the engine did not build its zero-valued series."""
    enabled = Gauge(
        "graphrun_cuda_graphs_enabled",
        "1 when decode runs through graphs (backend says which); 0 with the reason when it does not",
        ["backend", "reason"],
        registry=registry,
    )
    enabled.labels(backend or "none", off.value if off is not None else "none").set(0 if off else 1)
    collector = collector_for(registry)
    for name in ENGINE_RUNNER_NAMES:
        if name not in collector.names():
            collector.add(name, RunnerStats())


def release_runner_names(registry: CollectorRegistry, names: tuple[str, ...]) -> None:
    """Drop the zero series of runners about to be built after start-up (the structured decode kinds, at
    the first structured step: structured_graphs.py), so they can register under their names."""
    collector = collector_for(registry)
    for name in names:
        collector.remove(name)
