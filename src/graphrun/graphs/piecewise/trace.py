"""Turn a callable into an fx graph: torch.fx symbolic tracing first, torch.export where fx fails.

fx keeps nn.Module calls and torch functions as they were written (marked module types stay leaves, so a
split sees them whole); it fails on Python control flow over tensors, which most Hugging Face models
have. torch.export runs the real code with symbolic shapes and records aten ops; its batch dims are
declared dynamic so one graph serves every rung. Its flattened placeholders are fed through the input
spec export recorded, so the traced callable takes the same (args, kwargs) as the original.

A trace that fails both ways is Untraceable, with both reasons: the runner then runs every call eager
and says why. A trace is checked against the original on the example inputs before it is used.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx
from torch.fx import _pytree as fx_pytree
from torch.utils import _pytree

from graphrun.graphs.piecewise.registry import marked_module_types
from graphrun.graphs.verify import mismatch

log = logging.getLogger(__name__)

BatchDimOf = Callable[[Any], int | None]  # an example leaf -> its batch dim (None: not batched)


@dataclass(frozen=True, slots=True)
class Traced:
    """An fx graph of the callable, how it was traced, and (for export) its input and output specs."""

    module: fx.GraphModule
    how: str  # "fx" or "export"
    in_spec: _pytree.TreeSpec | None = None
    out_spec: _pytree.TreeSpec | None = None


@dataclass(frozen=True, slots=True)
class Untraceable:
    """Why no graph could be traced (both tracers' errors, first lines)."""

    reason: str


class _LeafTracer(fx.Tracer):
    """fx's tracer, keeping marked module types as leaves (one call node each)."""

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        marked = marked_module_types()
        return (bool(marked) and isinstance(m, marked)) or super().is_leaf_module(m, module_qualified_name)


class _AsModule(torch.nn.Module):
    """A plain function as a module, for the tracers that need one."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


Example = tuple[tuple[Any, ...], dict[str, Any]]


def trace(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    batch_dim_of: BatchDimOf,
    checks: Sequence[Example] = (),
) -> Traced | Untraceable:
    """fx, then torch.export; the first whose graph agrees with `fn` on the example inputs and on
    `checks` (inputs at other batch sizes: a trace that froze the batch size fails there) wins."""
    reasons = []
    for how, tracer in (("fx", _trace_fx), ("export", _trace_export)):
        try:
            traced = tracer(fn, args, kwargs, batch_dim_of)
            for check_args, check_kwargs in ((args, kwargs), *checks):
                _check_agrees(traced, fn, check_args, check_kwargs)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            reasons.append(f"{how}: {type(exc).__name__}: {first}")
            log.debug("piecewise: %s trace failed: %s", how, exc)
            continue
        log.info("piecewise: traced %s with %s (%d nodes)", _name(fn), how, len(traced.module.graph.nodes))
        return traced
    return Untraceable("; ".join(reasons))


def call_traced(
    traced: Traced, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Call `module` (the traced graph or a split of it) with the original calling convention."""
    if traced.in_spec is None:
        return module(*args, **kwargs)
    flat = fx_pytree.tree_flatten_spec((args, kwargs), traced.in_spec)
    out = module(*flat)
    assert traced.out_spec is not None
    return _pytree.tree_unflatten(list(out) if isinstance(out, tuple | list) else [out], traced.out_spec)


def _trace_fx(fn: Callable[..., Any], args: Any, kwargs: Any, batch_dim_of: BatchDimOf) -> Traced:
    graph = _LeafTracer().trace(fn)  # a module or a plain function
    root = fn if isinstance(fn, torch.nn.Module) else torch.nn.Module()
    return Traced(fx.GraphModule(root, graph, _name(fn)), "fx")


def _trace_export(fn: Callable[..., Any], args: Any, kwargs: Any, batch_dim_of: BatchDimOf) -> Traced:
    root = fn if isinstance(fn, torch.nn.Module) else _AsModule(fn)
    shapes = _dynamic_shapes(root, args, kwargs, batch_dim_of)
    program = torch.export.export(root, args, kwargs, dynamic_shapes=shapes, strict=False)
    module = program.module()
    assert isinstance(module, fx.GraphModule)
    codegen = module.graph._codegen
    info = codegen.pytree_info  # type: ignore[attr-defined]
    module.graph._codegen = fx.graph.CodeGen()  # plain flat placeholders: call_traced flattens
    module._forward_pre_hooks.clear()  # export's input checks expect the pytree calling convention
    module.recompile()
    return Traced(module, "export", info.in_spec, info.out_spec)


def _dynamic_shapes(
    root: torch.nn.Module, args: Any, kwargs: Any, batch_dim_of: BatchDimOf
) -> dict[str, Any]:
    """Each forward argument's spec: its batched tensors' batch dim is dynamic, the rest static."""
    bound = inspect.signature(root.forward).bind(*args, **kwargs)

    def spec(leaf: Any) -> Any:
        dim = batch_dim_of(leaf) if isinstance(leaf, torch.Tensor) else None
        return {dim: torch.export.Dim.DYNAMIC} if dim is not None else None

    return {name: _pytree.tree_map(spec, value) for name, value in bound.arguments.items()}


def _check_agrees(traced: Traced, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
    with torch.no_grad():
        want = _pytree.tree_leaves(fn(*args, **kwargs))
        got = _pytree.tree_leaves(call_traced(traced, traced.module, args, kwargs))
    if len(want) != len(got):
        raise RuntimeError(f"traced graph returns {len(got)} values, the callable {len(want)}")
    for w, g in zip(want, got, strict=True):
        problem = mismatch(g, w) if isinstance(w, torch.Tensor) and isinstance(g, torch.Tensor) else None
        if problem is not None:
            raise RuntimeError(f"traced graph disagrees with the callable: {problem}")


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__
