"""What a served policy is: the settings a factory gets and the PolicySource it returns (loading.py finds
the factory: `--policy example`, the built-in one in example.py, or `--policy pkg.mod:factory`).

A factory is called with the PolicySettings the server decided (device, dtype, ladder, graph options
with the served model's metrics registry, denoising steps), and the server serves the PolicySource it
returns: a Pipeline alone says nothing of what a request carries, so the source adds the observation's
tensors (wire dtype and shape, which may be left out, integer ranges), the action output, and how a
batch of requests' tensors becomes the pipeline's input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from graphrun.errors import ConfigError
from graphrun.graphs.options import RunnerOptions
from graphrun.pipeline.pipeline import Pipeline
from graphrun.pipeline.rows import RowKeys
from graphrun.serve.infer.schema import TensorSpec

# a batch of validated requests (wire arrays by name, each with its rows in dim 0) and their prefix keys
# (None: no request named an observation id) -> the pipeline's act() input
BatchInput = Callable[[Sequence[Mapping[str, np.ndarray]], RowKeys | None], Any]


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """What the server decided for the policy: where it runs, the batch rungs, the graph options every
    stage starts from (registry: the served model's, so /metrics carries the stages' series), the
    denoising steps (None: the policy's default)."""

    device: torch.device
    dtype: torch.dtype
    ladder: tuple[int, ...]
    options: RunnerOptions
    denoising_steps: int | None = None


@dataclass(frozen=True, slots=True)
class PolicySource:
    """A pipeline and the tensors of its /act: `inputs` (dim 0 the batch; `optional` ones may be left out),
    `ranges` (name -> [low, high) of an integer input: token ids), `output` (the action chunk: act()
    returns this one tensor, batch first) and `batch`, which builds act()'s input from a batch of
    requests."""

    pipeline: Pipeline
    inputs: tuple[TensorSpec, ...]
    output: TensorSpec
    batch: BatchInput
    optional: frozenset[str] = field(default_factory=frozenset)
    ranges: tuple[tuple[str, int, int], ...] = ()
    name: str = "policy"

    def __post_init__(self) -> None:
        names = {spec.name for spec in self.inputs}
        unknown = (self.optional | {name for name, _, _ in self.ranges}) - names
        if unknown:
            raise ConfigError(f"a PolicySource's optional/ranges name inputs it lacks: {sorted(unknown)}")
        if any(spec.shape[:1] != (None,) for spec in (*self.inputs, self.output)):
            raise ConfigError("every /act tensor has the batch as dim 0 (None in its shape)")
