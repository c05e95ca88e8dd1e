"""Per-request cache keys in one batched stage call: requests that share a call keep their own entries.

A server coalesces several requests into one batch (their rows concatenated along dim 0), yet each request
has its own observation id. `RowKeys` names each request's key and row count, in row order; a cached
stage called with one looks each key up, runs its runner once over the rows of the requests it did not
find (the batch shrinks, the runner pads it to its rung), stores each of those requests' rows under its
key, and returns every row in the original order. Requests without a key (None) always run and are never
stored. Every tensor argument and output is batched along dim 0; other arguments pass through as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from graphrun.errors import ConfigError
from graphrun.pipeline.cache import OutputCache


@dataclass(frozen=True, slots=True)
class RowKeys:
    """Each request of a batch: (its key or None, its rows), in row order."""

    segments: tuple[tuple[Hashable | None, int], ...]

    def __post_init__(self) -> None:
        if not self.segments or any(rows < 1 for _, rows in self.segments):
            raise ConfigError(f"RowKeys needs one or more requests of >= 1 rows, got {self.segments}")

    @property
    def rows(self) -> int:
        """The batch's rows: every request's, together."""
        return sum(rows for _, rows in self.segments)

    def slices(self) -> list[slice]:
        """Each request's rows of the batch."""
        out, start = [], 0
        for _, rows in self.segments:
            out.append(slice(start, start + rows))
            start += rows
        return out


def cached_rows(
    cache: OutputCache, run: Callable[[tuple[Any, ...]], Any], args: tuple[Any, ...], keys: RowKeys
) -> Any:
    """The stage's outputs for every row of `args`, each keyed request's rows from `cache` where stored;
    one `run` over the rows of the others (none when every request was found)."""
    slices = keys.slices()
    found: list[Any | None] = [
        cache.get(key, partial(_has_rows, rows=rows)) if key is not None else None
        for key, rows in keys.segments
    ]
    missing = [i for i, value in enumerate(found) if value is None]
    if missing:
        if len(missing) == len(found):
            fresh = run(args)
        else:
            fresh = run(tuple(_rows(arg, [slices[i] for i in missing]) for arg in args))
        start = 0
        for i in missing:
            key, rows = keys.segments[i]
            found[i] = _map(fresh, _row_copier(slice(start, start + rows)))
            start += rows
            if key is not None:
                cache.put(key, found[i])
    return _cat(found)


def _has_rows(value: Any, rows: int) -> bool:
    """Whether every tensor of a stored tree has `rows` rows (the same key sent with another batch size
    is a miss, run and stored again)."""
    if isinstance(value, torch.Tensor):
        return value.dim() > 0 and value.shape[0] == rows
    if isinstance(value, tuple | list):
        return all(_has_rows(v, rows) for v in value)
    if isinstance(value, dict):
        return all(_has_rows(v, rows) for v in value.values())
    return True


def _row_copier(rows: slice) -> Callable[[torch.Tensor], torch.Tensor]:
    """A copy of `rows` (the runner's outputs alias its static buffers, reused by its next call)."""
    return lambda tensor: tensor[rows].clone()


def _rows(arg: Any, slices: Sequence[slice]) -> Any:
    if not isinstance(arg, torch.Tensor):
        return arg
    return torch.cat([arg[s] for s in slices])


def _map(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`fn` on every tensor of a tuple/list/dict tree."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple | list):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


def _cat(parts: list[Any]) -> Any:
    """One tree whose every tensor is the parts' tensors concatenated along dim 0."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return first if len(parts) == 1 else torch.cat(parts)
    if isinstance(first, tuple | list):
        return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _cat([p[k] for p in parts]) for k in first}
    return first
