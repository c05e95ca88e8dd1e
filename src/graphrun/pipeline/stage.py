"""One stage of a pipeline: a name, a runner with GraphRunner's call API, and an optional output cache.

The runner is anything that satisfies StageRunner: a GraphRunner in any mode (with its own rungs,
padding, verification and fallback), or another runner with the same call API (an ONNX Runtime runner).
The pipeline reads only what the protocol names: the call, the runner's name and its status().
Stages pass device tensors: a stage's outputs go to the next stage as they are, no host copy between.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from graphrun.errors import ConfigError
from graphrun.graphs.status import RunnerStatus
from graphrun.pipeline.cache import OutputCache
from graphrun.pipeline.rows import RowKeys, cached_rows

LABEL_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # stage and model names become metric label values


@runtime_checkable
class StageRunner(Protocol):
    """What a pipeline needs of a stage's runner: GraphRunner's call API, its name and its status."""

    name: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run one call (replayed or eager); outputs may alias buffers reused by the next call."""

    def status(self) -> RunnerStatus:
        """Per rung: captured or eager, and why."""


@dataclass(slots=True)
class StageStats:
    """Plain counters of one stage, read by the metrics collector at scrape time."""

    calls: int = 0  # calls that ran the runner (cache hits are not calls)


def check_label(kind: str, value: str) -> str:
    """`value` if it can be a metric label value (1-64 of A-Z a-z 0-9 _ . -), else a ConfigError."""
    if not isinstance(value, str) or LABEL_PATTERN.fullmatch(value) is None:
        raise ConfigError(f"{kind} name {value!r} must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'")
    return value


class Stage:
    """A named runner; with cache_entries > 0, its outputs are cached by the key a call passes."""

    def __init__(self, name: str, runner: StageRunner, *, cache_entries: int = 0) -> None:
        if not isinstance(runner, StageRunner):
            raise ConfigError(
                f"stage {name!r}: the runner must have GraphRunner's call API (name, __call__, status()), "
                f"got {type(runner).__name__}"
            )
        self.name = check_label("stage", name)
        self.runner = runner
        self.cache = OutputCache(cache_entries) if cache_entries else None
        self.stats = StageStats()

    def __call__(self, *args: Any, key: Hashable | None = None) -> Any:
        """Run the stage; with a cache and a key, a stored output is returned without running it.

        A cached output is shared by every hit: read it, never write into it. A RowKeys key (rows.py)
        keys each request of a batched call on its own.
        """
        cache = self.cache
        if cache is not None and isinstance(key, RowKeys):
            return cached_rows(cache, self._run, args, key)
        if cache is not None and key is not None:
            stored = cache.get(key)
            if stored is not None:
                return stored
            out = _copied(self._run(args))  # the runner's outputs alias its static buffers
            cache.put(key, out)
            return out
        return self._run(args)

    def _run(self, args: tuple[Any, ...]) -> Any:
        self.stats.calls += 1
        return self.runner(*args)


def _copied(value: Any) -> Any:
    """A copy of every tensor in a tuple/list/dict tree of outputs."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple | list):
        return type(value)(_copied(v) for v in value)
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    return value
