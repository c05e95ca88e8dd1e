"""The /act batcher's Prometheus series: rows and requests per act() call, and each request's wait.

They sit beside the pipeline's own series (graphrun_pipeline_*: stage tiers, cache hits and misses) and
its stages' graph series (graphrun_cuda_graph_*{stage, model}) in the served policy's registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from graphrun.serve.infer.metrics import BatchMetrics


class ActMetrics(BatchMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "act", "act() call")
