"""The batcher's Prometheus series: how many rows and requests each call carried, how long requests
waited for their batch, and how much of each padded call was padding (rows, and with declared dynamic
dims every dim: bucketed.py).

They sit beside the runner's own graph series (`graphrun_cuda_graph_*{runner="infer"}`) in the served
model's registry; /metrics joins them with the HTTP side's.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

ROW_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024)
WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class InferMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_rows = Histogram(
            "graphrun_infer_batch_rows", "Rows in one model call (before padding)", buckets=ROW_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "graphrun_infer_batch_requests", "Requests coalesced into one model call", buckets=ROW_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "graphrun_infer_queue_wait_seconds", "From submission to the start of the request's model call",
            buckets=WAIT_BUCKETS, registry=registry,
        )  # fmt: skip
        self.padding_ratio = Histogram(
            "graphrun_infer_padding_ratio",
            "Padded / all positions of each padded call (a position: a row at one size of every dynamic dim)",
            buckets=RATIO_BUCKETS, registry=registry,
        )  # fmt: skip
