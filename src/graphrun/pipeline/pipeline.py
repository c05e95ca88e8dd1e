"""Pipeline: named stages run by a flow, each stage captured on its own, with tier-aware start-up.

A pipeline is stages plus a flow: the function that turns one input (an observation) into the answer by
calling stages, e.g. the prefix once, then the expert N times. The pipeline owns what is common to every
flow: stage lookup, caching (stage.py), the start-up probe and its log lines (startup.py) and metrics
(metrics.py). Construction is the probe: when it returns, every stage is captured or has fallen back,
which is the readiness a server waits for.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from graphrun.errors import ConfigError
from graphrun.pipeline.metrics import PipelineStats, register_pipeline
from graphrun.pipeline.stage import Stage, check_label
from graphrun.pipeline.startup import StageReport, StageTier, start_up


class Flow(Protocol):
    """Turns one input into the pipeline's answer by calling its stages (pipeline.call)."""

    def __call__(self, pipeline: Pipeline, inputs: Any, /) -> Any: ...


class Pipeline:
    """Stages by name, run by `flow` on act(inputs); `model` labels its metrics (bounded: one per pipeline).

    Every stage is probed at construction (startup.py): a stage whose capture failed runs eager for the life
    of the process and the others keep their graphs. registry: where the pipeline's series go (the default
    registry when None); the stages' runners should be registered there too, so their graph series carry
    the stage and model labels.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        flow: Flow,
        *,
        model: str = "pipeline",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.model = check_label("model", model)
        self._stages = _by_name(stages)
        self._flow = flow
        self.reports = start_up(self.model, tuple(self._stages.values()))
        self.stats = PipelineStats(tuple(self._stages.values()), self.reports)
        register_pipeline(self, self.model, self.stats, registry)

    def act(self, inputs: Any) -> Any:
        """Run the flow on one input (an observation) and return its answer (an action chunk)."""
        self.stats.acts += 1
        return self._flow(self, inputs)

    def call(self, stage: str, *args: Any, key: Hashable | None = None) -> Any:
        """Run one stage (through its cache when it has one and `key` is given)."""
        return self[stage](*args, key=key)

    def __getitem__(self, stage: str) -> Stage:
        try:
            return self._stages[stage]
        except KeyError:
            raise ConfigError(
                f"pipeline {self.model} has no stage {stage!r}; stages: {list(self._stages)}"
            ) from None

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stages, in the order given."""
        return tuple(self._stages.values())

    def tier(self, stage: str) -> StageTier:
        """How `stage` runs since start-up: graph, partial or eager."""
        return self.report(stage).tier

    def report(self, stage: str) -> StageReport:
        """The start-up report of `stage`."""
        self[stage]  # an unknown name raises, naming the stages
        return next(r for r in self.reports if r.stage == stage)

    def close(self) -> None:
        """Release every stage's graphs (runners that have close()) and empty the caches."""
        for stage in self._stages.values():
            if stage.cache is not None:
                stage.cache.clear()
            close = getattr(stage.runner, "close", None)
            if callable(close):
                close()


def _by_name(stages: Sequence[Stage]) -> dict[str, Stage]:
    if not stages:
        raise ConfigError("a pipeline needs at least one stage")
    names = [s.name for s in stages]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"stage names must be unique, got {dupes} more than once")
    return {s.name: s for s in stages}
