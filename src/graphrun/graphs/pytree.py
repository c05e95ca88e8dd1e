"""Pytree specs compiled to straight-line Python, so flattening a call's inputs costs ~1 us, not ~13.

torch.utils._pytree walks the structure generically on every call; on a slow host CPU that alone eats most
of the 20 us budget a runner has over raw replay. Here the structure is read once from the example
inputs and turned into a generated function that indexes the known slots and checks lengths and types.
Containers: tuple, list, dict. Everything else is a leaf (tensors, Python scalars, None, strings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

_CONTAINERS = (tuple, list, dict)


class StructureMismatch(Exception):
    """Raised by a compiled flattener when the object does not have the spec's structure."""


@dataclass(frozen=True, slots=True)
class Node:
    """One node of a spec: a container (kind tuple/list/dict with keys) or a leaf (kind 'leaf')."""

    kind: str
    children: tuple[Node, ...] = ()
    keys: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class TreeSpec:
    """A structure plus its compiled flatten/unflatten functions."""

    root: Node
    num_leaves: int
    flatten: Callable[[Any], tuple[Any, ...]]
    unflatten: Callable[[Any], Any]

    def describe(self) -> str:
        """Human-readable structure, used in error messages."""
        return _describe_node(self.root)


def spec_of(obj: Any) -> TreeSpec:
    """Read the structure of `obj` and compile its flatten and unflatten functions."""
    root = _node_of(obj)
    count = _count(root)
    return TreeSpec(root, count, _compile_flatten(root), _compile_unflatten(root))


def leaves_of(obj: Any) -> list[Any]:
    """Generic (slow) flatten, for one-off use on example inputs and outputs."""
    if isinstance(obj, dict):
        return [leaf for k in obj for leaf in leaves_of(obj[k])]
    if type(obj) in (tuple, list):
        return [leaf for child in obj for leaf in leaves_of(child)]
    return [obj]


def describe(obj: Any) -> str:
    """Describe an arbitrary object's structure the way TreeSpec.describe does."""
    return _describe_node(_node_of(obj), obj)


def _node_of(obj: Any) -> Node:
    if type(obj) is dict:
        keys = tuple(obj)
        return Node("dict", tuple(_node_of(obj[k]) for k in keys), keys)
    if type(obj) in (tuple, list):
        return Node(type(obj).__name__, tuple(_node_of(c) for c in obj))
    return Node("leaf")


def _count(node: Node) -> int:
    return 1 if node.kind == "leaf" else sum(_count(c) for c in node.children)


def _describe_node(node: Node, obj: Any = None) -> str:
    if node.kind == "leaf":
        if obj is None:
            return "leaf"
        if isinstance(obj, torch.Tensor):
            return f"Tensor{tuple(obj.shape)}:{str(obj.dtype).removeprefix('torch.')}"
        return type(obj).__name__
    if node.kind == "dict":
        inner = ", ".join(
            f"{k!r}: {_describe_node(c, None if obj is None else obj[k])}"
            for k, c in zip(node.keys, node.children, strict=True)
        )
        return "{" + inner + "}"
    parts = [_describe_node(c, None if obj is None else obj[i]) for i, c in enumerate(node.children)]
    return ("(" if node.kind == "tuple" else "[") + ", ".join(parts) + (")" if node.kind == "tuple" else "]")


def _compile_flatten(root: Node) -> Callable[[Any], tuple[Any, ...]]:
    lines: list[str] = []
    leaves: list[str] = []
    counter = [0]

    def visit(node: Node, expr: str) -> None:
        if node.kind == "leaf":
            leaves.append(expr)
            return
        name = f"v{counter[0]}"
        counter[0] += 1
        lines.append(f"    {name} = {expr}")
        lines.append(
            f"    if type({name}) is not {node.kind} or len({name}) != {len(node.children)}: raise M"
        )
        if node.kind == "dict":
            for key, child in zip(node.keys, node.children, strict=True):
                visit(child, f"{name}[{key!r}]")
        else:
            for i, child in enumerate(node.children):
                visit(child, f"{name}[{i}]")

    visit(root, "obj")
    body = "\n".join(lines) if lines else "    pass"
    trailing = "," if len(leaves) == 1 else ""
    src = f"def flatten(obj):\n{body}\n    return ({', '.join(leaves)}{trailing})\n"
    return _exec(src, "flatten")


def _compile_unflatten(root: Node) -> Callable[[Any], Any]:
    counter = [0]

    def expr(node: Node) -> str:
        if node.kind == "leaf":
            i = counter[0]
            counter[0] += 1
            return f"l[{i}]"
        items = [expr(c) for c in node.children]
        if node.kind == "dict":
            return "{" + ", ".join(f"{k!r}: {e}" for k, e in zip(node.keys, items, strict=True)) + "}"
        if node.kind == "tuple":
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        return "[" + ", ".join(items) + "]"

    return _exec(f"def unflatten(l):\n    return {expr(root)}\n", "unflatten")


def _exec(src: str, name: str) -> Callable[[Any], Any]:
    namespace: dict[str, Any] = {"M": StructureMismatch, "tuple": tuple, "list": list, "dict": dict}
    exec(compile(src, f"<graphrun.pytree.{name}>", "exec"), namespace)  # keys are repr()'d literals
    fn: Callable[[Any], Any] = namespace[name]
    return fn
