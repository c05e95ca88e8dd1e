"""The /act batcher's Prometheus series: rows and requests per act() call, and each request's wait.

They sit beside the pipeline's own series (graphrun_pipeline_*: stage tiers, cache hits and misses) and
its stages' graph series (graphrun_cuda_graph_*{stage, model}) in the served policy's registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from graphrun.serve.infer.metrics import ROW_BUCKETS, WAIT_BUCKETS


class ActMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_rows = Histogram(
            "graphrun_act_batch_rows", "Rows in one act() call (before padding)", buckets=ROW_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "graphrun_act_batch_requests", "Requests coalesced into one act() call", buckets=ROW_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "graphrun_act_queue_wait_seconds", "From submission to the start of the request's act() call",
            buckets=WAIT_BUCKETS, registry=registry,
        )  # fmt: skip
