"""Prometheus series of pipelines, prefix `graphrun_pipeline_`, read from plain counters at scrape time.

Labels are bounded: `model` (one per pipeline, from its config; at most MAX_PIPELINES per registry),
`stage` (the pipeline's fixed stage names) and `tier` (StageTier). Graph series of a stage's runner
(captures, replays, fallbacks, capture failures at start-up) are the runner's own, in graphs/metrics.py,
labelled there with the stage and model too; nothing here repeats them.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from graphrun.errors import ConfigError
from graphrun.graphs.metrics import collector_for as graph_collector_for
from graphrun.pipeline.stage import Stage
from graphrun.pipeline.startup import StageReport

MAX_PIPELINES = 16


@dataclass(slots=True)
class PipelineStats:
    """What one pipeline exposes: its act() count, its stages, and their start-up reports."""

    stages: Sequence[Stage]
    reports: Sequence[StageReport] = ()
    acts: int = 0


class PipelineMetricsCollector(Collector):
    """Exposes every pipeline registered with it."""

    def __init__(self) -> None:
        self._pipelines: dict[str, PipelineStats] = {}

    def add(self, model: str, stats: PipelineStats) -> None:
        """Register a pipeline under its model label (unique per registry, bounded in number)."""
        if model in self._pipelines:
            raise ConfigError(
                f"a pipeline with model label {model!r} is already registered with this metrics registry; "
                "give each Pipeline a distinct model="
            )
        if len(self._pipelines) >= MAX_PIPELINES:
            raise ConfigError(f"at most {MAX_PIPELINES} pipelines per registry (labels must stay bounded)")
        self._pipelines[model] = stats

    def remove(self, model: str) -> None:
        """Forget a pipeline (its series disappear from the next scrape)."""
        self._pipelines.pop(model, None)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Build every series from the current counters."""
        p, ms = "graphrun_pipeline_", ["model", "stage"]
        acts = CounterMetricFamily(p + "acts", "act() calls", labels=["model"])
        calls = CounterMetricFamily(p + "stage_calls", "Stage runs (cache hits excluded)", labels=ms)
        tier = GaugeMetricFamily(
            p + "stage_tier", "How a stage runs since start-up (value 1)", labels=[*ms, "tier"]
        )
        hits = CounterMetricFamily(p + "cache_hits", "Stage outputs served from its cache", labels=ms)
        misses = CounterMetricFamily(p + "cache_misses", "Keyed stage calls not in its cache", labels=ms)
        evictions = CounterMetricFamily(p + "cache_evictions", "Entries dropped by the bound", labels=ms)
        entries = GaugeMetricFamily(p + "cache_entries", "Entries held in the stage cache", labels=ms)
        for model, s in self._pipelines.items():
            acts.add_metric([model], s.acts)
            for report in s.reports:
                tier.add_metric([model, report.stage, report.tier.value], 1)
            for stage in s.stages:
                calls.add_metric([model, stage.name], stage.stats.calls)
                if stage.cache is not None:
                    c = stage.cache.stats
                    hits.add_metric([model, stage.name], c.hits)
                    misses.add_metric([model, stage.name], c.misses)
                    evictions.add_metric([model, stage.name], c.evictions)
                    entries.add_metric([model, stage.name], c.entries)
        yield from (acts, calls, tier, hits, misses, evictions, entries)


_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, PipelineMetricsCollector] = (
    weakref.WeakKeyDictionary()
)


def register_pipeline(
    owner: object, model: str, stats: PipelineStats, registry: CollectorRegistry | None
) -> None:
    """Register a pipeline's stats (unregistered when `owner` is collected), and label its stages' runner
    series in the same registry with `stage` and `model` (runners registered elsewhere are left as they are).
    """
    registry = registry if registry is not None else REGISTRY
    collector = _COLLECTORS.get(registry)
    if collector is None:
        collector = PipelineMetricsCollector()
        registry.register(collector)
        _COLLECTORS[registry] = collector
    collector.add(model, stats)
    weakref.finalize(owner, collector.remove, model)
    graphs = graph_collector_for(registry)
    for stage in stats.stages:
        if stage.runner.name in graphs.names():
            graphs.label_runner(stage.runner.name, {"stage": stage.name, "model": model})
