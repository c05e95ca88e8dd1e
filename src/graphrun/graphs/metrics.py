"""Prometheus series for graph runners, prefix `graphrun_`, read from plain counters at scrape time.

Labels are bounded: `runner` comes from names registered with a collector (at most MAX_RUNNERS), `reason`
from the enums in status.py. One collector per registry; every runner sharing a registry shares it.

A runner that serves as one stage of a pipeline (graphrun.pipeline) also carries `stage` and `model` labels
on its series, set once with label_runner(): `capture_failed_at_init_total{stage="prefix",reason="oom"}`
is the same counter as the runner's, not a second one. Only the names in EXTRA_LABELS may be set.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from graphrun.errors import ConfigError
from graphrun.graphs.size_histogram import BucketStats, folded
from graphrun.graphs.status import REPLAY_BUCKETS, CallFallback, CaptureFailure, RunnerStats

MAX_RUNNERS = 64
EXTRA_LABELS = ("stage", "model")  # the only labels label_runner() may add to a runner's series


class GraphMetricsCollector(Collector):
    """Exposes the stats of every runner registered with it."""

    def __init__(self) -> None:
        self._runners: dict[str, RunnerStats] = {}
        self._buckets: dict[str, BucketStats] = {}
        self._labels: dict[str, dict[str, str]] = {}  # runner name -> its extra labels (EXTRA_LABELS)

    def add(self, name: str, stats: RunnerStats) -> None:
        """Register a runner's stats under `name` (unique per registry, bounded in number)."""
        if name in self._runners:
            raise ConfigError(
                f"a runner named {name!r} is already registered with this metrics registry; "
                "give each GraphRunner a distinct name="
            )
        if len(self._runners) >= MAX_RUNNERS:
            raise ConfigError(f"at most {MAX_RUNNERS} runner names per registry (labels must stay bounded)")
        self._runners[name] = stats

    def add_buckets(self, name: str, stats: BucketStats) -> None:
        """Register a bucketed runner's stats (buckets/): its per-dim size histograms and eager calls."""
        if name in self._buckets or len(self._buckets) >= MAX_RUNNERS:
            raise ConfigError(
                f"bucketed runner {name!r}: already registered, or {MAX_RUNNERS} names used in this "
                "registry; give each BucketedRunner a distinct name="
            )
        self._buckets[name] = stats

    def label_runner(self, name: str, labels: dict[str, str]) -> None:
        """Add constant labels (keys from EXTRA_LABELS) to every series of the registered runner `name`."""
        if name not in self._runners:
            raise ConfigError(f"no runner named {name!r} is registered with this metrics registry")
        unknown = sorted(set(labels) - set(EXTRA_LABELS))
        if unknown:
            raise ConfigError(f"runner labels may be {list(EXTRA_LABELS)}, got {unknown}")
        self._labels[name] = dict(labels)

    def names(self) -> set[str]:
        """Runner names registered so far."""
        return set(self._runners)

    def bucket_names(self) -> set[str]:
        """Bucketed runner names registered so far."""
        return set(self._buckets)

    def remove(self, name: str) -> None:
        """Forget a runner (its series disappear from the next scrape)."""
        self._runners.pop(name, None)
        self._buckets.pop(name, None)
        self._labels.pop(name, None)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        """Build every series from the current counters."""
        p = "graphrun_cuda_graph_"
        captured = CounterMetricFamily(p + "captured", "Rungs captured", labels=["runner"])
        replayed = CounterMetricFamily(p + "replayed", "Graph replays", labels=["runner"])
        fallback = CounterMetricFamily(p + "eager_fallback", "Calls run eager", labels=["runner", "reason"])
        failed = CounterMetricFamily(
            p + "capture_failed_at_init",
            "Rungs not captured at start-up (padding_mismatch: captured, exact-size calls only)",
            labels=["runner", "reason"],
        )
        capture_s = GaugeMetricFamily(p + "capture_seconds", "Seconds spent capturing", labels=["runner"])
        compile_s = GaugeMetricFamily(
            "graphrun_compile_seconds", "Seconds the compile phase took (compile=True)", labels=["runner"]
        )
        compile_hit = GaugeMetricFamily(
            "graphrun_compile_cache_hit", "1 when the compile read stored artifacts", labels=["runner"]
        )
        padding = GaugeMetricFamily(p + "padding_ratio", "Padded rows over graph rows", labels=["runner"])
        replay_s = HistogramMetricFamily(
            p + "replay_seconds", "Host time per replayed call", labels=["runner"]
        )
        mode = GaugeMetricFamily(p + "mode", "The runner's graph mode (value 1)", labels=["runner", "mode"])
        pending = GaugeMetricFamily(
            p + "pending_rungs", "Rungs a background capture has still to capture", labels=["runner"]
        )
        batch_size = HistogramMetricFamily(
            p + "batch_size", "Calls per batch size (graphrun ladder reads it)", labels=["runner"]
        )
        for name, s in self._runners.items():
            batch_size.add_metric(
                [name], _buckets(s.batch_size_counts), sum_value=_size_sum(s.batch_size_counts)
            )
            mode.add_metric([name, s.mode], 1)
            pending.add_metric([name], s.num_pending)
            captured.add_metric([name], s.num_captured)
            replayed.add_metric([name], s.num_replayed)
            for call_reason in CallFallback:
                fallback.add_metric([name, call_reason.value], s.eager_fallback.get(call_reason, 0))
            for cap_reason in CaptureFailure:
                failed.add_metric([name, cap_reason.value], s.capture_failed.get(cap_reason, 0))
            capture_s.add_metric([name], s.capture_seconds)
            compile_s.add_metric([name], s.compile_seconds)
            compile_hit.add_metric([name], float(s.compile_cache_hit))
            padding.add_metric([name], s.padding_ratio)
            cumulative, buckets = 0, []
            for bound, count in zip((*REPLAY_BUCKETS, float("inf")), s.replay_bucket_counts, strict=True):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            replay_s.add_metric([name], buckets, s.replay_seconds_sum)
        families = (captured, replayed, fallback, failed, capture_s, compile_s, compile_hit, padding)
        yield from (self._labelled(f) for f in (*families, replay_s, mode, pending, batch_size))
        yield from self._bucket_families()

    def _labelled(self, family: Any) -> Any:
        """The family with each labelled runner's extra labels added to its samples."""
        if self._labels:
            family.samples = [
                s._replace(labels={**s.labels, **self._labels[s.labels["runner"]]})
                if s.labels.get("runner") in self._labels
                else s
                for s in family.samples
            ]
        return family

    def _bucket_families(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        """graphrun_bucket_size{runner,dim} and graphrun_bucket_eager_fallback{runner,reason}."""
        sizes = HistogramMetricFamily(
            "graphrun_bucket_size", "Calls per size of each bucketed dim", labels=["runner", "dim"]
        )
        eager = CounterMetricFamily(
            "graphrun_bucket_eager_fallback", "Bucketed calls run eager", labels=["runner", "reason"]
        )
        for name, s in self._buckets.items():
            for dim, counts in s.sizes.items():
                sizes.add_metric([name, dim], _buckets(counts), sum_value=_size_sum(counts))
            for reason in CallFallback:
                eager.add_metric([name, reason.value], s.eager_fallback.get(reason, 0))
        yield from (sizes, eager)


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    return [(_bound(bound if bound == float("inf") else int(bound)), c) for bound, c in folded(counts)]


def _size_sum(counts: list[int]) -> float:
    """Sum of the sizes counted (calls above the top rung are not in it: their size is not kept)."""
    return float(sum(n * c for n, c in enumerate(counts[:-1])))


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, GraphMetricsCollector] = weakref.WeakKeyDictionary()


def collector_for(registry: CollectorRegistry) -> GraphMetricsCollector:
    """The one graphrun collector of `registry`, registered on first use."""
    collector = _COLLECTORS.get(registry)
    if collector is None:
        collector = GraphMetricsCollector()
        registry.register(collector)
        _COLLECTORS[registry] = collector
    return collector


def register_runner(
    owner: object,
    fn: Callable[..., Any],
    name: str | None,
    registry: CollectorRegistry | None,
    stats: RunnerStats,
) -> str:
    """Register a runner's stats under `name` (or an automatic, never colliding one from `fn`'s name) with
    the collector of `registry` (the default one when None); unregistered when `owner` is collected."""
    collector = collector_for(registry if registry is not None else REGISTRY)
    base = name or getattr(fn, "__name__", None) or type(fn).__name__
    chosen = base
    if name is None:  # an automatic name never collides: suffix it
        taken = collector.names()
        suffix = 2
        while chosen in taken:
            chosen, suffix = f"{base}-{suffix}", suffix + 1
    collector.add(chosen, stats)
    weakref.finalize(owner, collector.remove, chosen)
    return chosen
