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


class BatchMetrics:
    """A batcher's histograms, `graphrun_<route>_*`: rows and requests per call, each request's wait
    (`call` names the call in their help, e.g. "model call")."""

    def __init__(self, registry: CollectorRegistry, route: str, call: str) -> None:
        self.batch_rows = Histogram(
            f"graphrun_{route}_batch_rows", f"Rows in one {call} (before padding)", buckets=ROW_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.batch_requests = Histogram(
            f"graphrun_{route}_batch_requests", f"Requests coalesced into one {call}", buckets=ROW_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            f"graphrun_{route}_queue_wait_seconds", f"From submission to the start of the request's {call}",
            buckets=WAIT_BUCKETS, registry=registry,
        )  # fmt: skip


class InferMetrics(BatchMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "infer", "model call")
        self.padding_ratio = Histogram(
            "graphrun_infer_padding_ratio",
            "Padded / all positions of each padded call (a position: a row at one size of every dynamic dim)",
            buckets=RATIO_BUCKETS, registry=registry,
        )  # fmt: skip
