"""Which leaves of a call are batched: broadcasting a `batch_dims` prefix tree over the inputs.

`batch_dims` is an int or None (every positional leaf) or a tuple/list, a prefix of the positional
arguments; `kwarg_batch_dims` is an int, None or a dict, a prefix of the keyword arguments (default: the
same int as batch_dims, or 0). A prefix leaf applies to every leaf below it, so batch_dims=(0, None)
batches arg 0 and shares arg 1, and kwarg_batch_dims={"mask": None} shares the keyword `mask`.
"""

from __future__ import annotations

from typing import Any

import torch

from graphrun.errors import ConfigError
from graphrun.graphs.pytree import leaves_of

BatchDims = int | None | tuple[Any, ...] | list[Any]
KwargBatchDims = int | None | dict[str, Any]


def leaf_paths(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """Readable path of every leaf of (args, kwargs), in flatten order: args[0], kwargs['mask'][1]..."""
    paths: list[str] = []

    def walk(obj: Any, path: str) -> None:
        if type(obj) is dict:
            for k in obj:
                walk(obj[k], f"{path}[{k!r}]")
        elif type(obj) in (tuple, list):
            for i, child in enumerate(obj):
                walk(child, f"{path}[{i}]")
        else:
            paths.append(path)

    for i, a in enumerate(args):
        walk(a, f"args[{i}]")
    for k, v in kwargs.items():
        walk(v, f"kwargs[{k!r}]")
    return paths


def leaf_batch_dims(
    batch_dims: BatchDims,
    kwarg_batch_dims: KwargBatchDims | str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> list[int | None]:
    """Batch dimension of every leaf of (args, kwargs), in flatten order (None = not batched)."""
    if not (batch_dims is None or isinstance(batch_dims, int | tuple | list)):
        raise ConfigError(f"batch_dims must be an int, None or a tuple, got {type(batch_dims).__name__}")
    if kwarg_batch_dims == "same":
        kwarg_batch_dims = batch_dims if batch_dims is None or isinstance(batch_dims, int) else 0
    if not (kwarg_batch_dims is None or isinstance(kwarg_batch_dims, int | dict)):
        raise ConfigError(
            f"kwarg_batch_dims must be an int, None or a dict, got {type(kwarg_batch_dims).__name__}"
        )
    dims_args = tuple(batch_dims) if isinstance(batch_dims, list) else batch_dims
    out = _broadcast(dims_args, args, "batch_dims") + _broadcast(kwarg_batch_dims, kwargs, "kwarg_batch_dims")
    for dim, leaf, path in zip(out, leaves_of((args, kwargs)), leaf_paths(args, kwargs), strict=True):
        if dim is not None and isinstance(leaf, torch.Tensor) and not 0 <= dim < leaf.dim():
            raise ConfigError(
                f"batch_dims gives {path} batch dimension {dim}, but it has shape {tuple(leaf.shape)}"
            )
    return out


def _broadcast(prefix: Any, tree: Any, where: str) -> list[int | None]:
    if prefix is None or (isinstance(prefix, int) and not isinstance(prefix, bool)):
        return [prefix] * len(leaves_of(tree))
    if isinstance(prefix, dict) and type(tree) is dict:
        unknown = set(prefix) - set(tree)
        if unknown:
            raise ConfigError(f"{where} names keys {sorted(unknown)} that the inputs do not have")
        return [d for k in tree for d in _broadcast(prefix.get(k, 0), tree[k], f"{where}[{k!r}]")]
    if isinstance(prefix, tuple | list) and type(tree) in (tuple, list):
        if len(prefix) != len(tree):
            raise ConfigError(f"{where} has {len(prefix)} entries but the inputs have {len(tree)} there")
        return [
            d
            for i, (p, t) in enumerate(zip(prefix, tree, strict=True))
            for d in _broadcast(p, t, f"{where}[{i}]")
        ]
    raise ConfigError(f"{where} does not match the structure of the inputs there ({type(tree).__name__})")
