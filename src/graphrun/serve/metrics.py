"""The server's Prometheus series of the HTTP side: request outcomes, whatever the served model.

A served model keeps its series (an LLM's tokens and occupancy, llm_metrics.py; a tensor model's batches,
infer/metrics.py) in its own registry, where it runs; /metrics joins the two scrapes (host/client.py),
and the two sets of names never overlap. Labels are bounded: `status` takes the values of
REQUEST_STATUSES only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

# what generate_latest writes (Prometheus text 0.0.4: legacy-escaped names), whatever the client version
# calls "latest" (prometheus_client 0.22+ says 1.0.0 there, which older scrapers do not know)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# ok: finished; aborted: the client went away; invalid: 4xx other than 429; overloaded: 429;
# unavailable: 503 (starting, draining); error: 500
REQUEST_STATUSES = ("ok", "aborted", "invalid", "overloaded", "unavailable", "error")


class RequestMetrics:
    """Request outcomes, counted where the HTTP answers are made."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "graphrun_requests", "Completion requests by outcome", ["status"], registry=registry
        )
        for status in REQUEST_STATUSES:
            self.requests.labels(status)  # every series exists from the start, at 0

    def count(self, status: str) -> None:
        """One request ended with `status` (one of REQUEST_STATUSES)."""
        assert status in REQUEST_STATUSES, status
        self.requests.labels(status).inc()
