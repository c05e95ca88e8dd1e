"""An LLM served model's Prometheus series: tokens, latencies and occupancy, observed where the engine runs.

They live in the served model's registry (llm_model.py): with the engine in its own process, /metrics
joins them to the HTTP side's (metrics.py); the names never overlap.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from graphrun.llm.scheduler import Scheduler

TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5)


class EngineMetrics:
    """Token counts, latencies and occupancy, observed where the engine runs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.prompt_tokens = Counter("graphrun_prompt_tokens", "Prompt tokens admitted", registry=registry)
        self.generation_tokens = Counter("graphrun_generation_tokens", "Tokens generated", registry=registry)
        self.ttft = Histogram(
            "graphrun_time_to_first_token_seconds",
            "From submission to the first generated token",
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "graphrun_inter_token_latency_seconds",
            "Between consecutive tokens of one request",
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge("graphrun_queue_depth", "Requests waiting for admission", registry=registry)
        self.kv_blocks_in_use = Gauge("graphrun_kv_blocks_in_use", "KV-cache blocks held", registry=registry)
        self.requests_running = Gauge(
            "graphrun_requests_running", "Requests admitted to the engine", registry=registry
        )
        self.prefills = Counter(
            "graphrun_prefills",
            "Prefills started (prompts, and recomputes after preemption)",
            registry=registry,
        )
        self.forks = Counter(
            "graphrun_choice_forks", "Choices (n > 1) that shared their prompt's prefill", registry=registry
        )
        self.prefix_queries = Counter(
            "graphrun_prefix_cache_queries", "Prompt tokens looked up in the prefix cache", registry=registry
        )
        self.prefix_hits = Counter(
            "graphrun_prefix_cache_hits", "Prompt tokens the prefix cache held", registry=registry
        )
        self.prefix_hit_rate = Gauge(
            "graphrun_prefix_cache_hit_rate",
            "Prefix-cache hits / queries, in tokens, since start",
            registry=registry,
        )
        self._seen = (0, 0, 0, 0)  # the scheduler's counters at the last publish

    def observe_token(self, first: bool, seconds: float) -> None:
        """A token arrived `seconds` after submission (first) or after the request's previous token."""
        (self.ttft if first else self.itl).observe(seconds)

    def publish(self, scheduler: Scheduler, num_unsubmitted: int) -> None:
        """(engine thread) Occupancy gauges after a step; num_unsubmitted: commands not yet applied."""
        self.queue_depth.set(scheduler.num_waiting + num_unsubmitted)
        self.kv_blocks_in_use.set(scheduler.block_manager.num_used_blocks)
        self.requests_running.set(scheduler.num_running)
        now = (
            scheduler.num_prefills,
            scheduler.num_forks,
            scheduler.num_prefix_queried_tokens,
            scheduler.num_prefix_hit_tokens,
        )
        for counter, value, seen in zip(
            (self.prefills, self.forks, self.prefix_queries, self.prefix_hits), now, self._seen, strict=True
        ):
            counter.inc(value - seen)
        self._seen = now
        if now[2]:
            self.prefix_hit_rate.set(now[3] / now[2])
