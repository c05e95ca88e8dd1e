"""Which ops and module types run eagerly between piecewise segments: the registry and its predicate.

`mark_uncapturable(target)` adds an op (an aten op or overload, a torch function) or an nn.Module type
to one process-wide registry; this module's `_MARKED` set is that registry, the one piece of mutable
module state graphs/ keeps, documented as such. A runner may also pass its own predicate on fx nodes.

A marked torch function also matches the aten op of the same name, so marking
`torch.nn.functional.scaled_dot_product_attention` splits both an fx trace (which keeps the function)
and a torch.export trace (which records `aten.scaled_dot_product_attention`). A marked module type
matches its call in an fx trace (it is kept as a leaf) and every op an export trace records inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from graphrun.errors import ConfigError

NodePredicate = Callable[[fx.Node], bool]

# The registry: targets marked uncapturable, process-wide (mutated only by mark/unmark below).
_MARKED: set[Any] = set()


def mark_uncapturable(target: Any) -> None:
    """Make every call of `target` (an op, a torch function or an nn.Module type) a piecewise split."""
    _check_target(target)
    _MARKED.add(target)


def unmark_uncapturable(target: Any) -> None:
    """Undo mark_uncapturable (a target never marked is ignored)."""
    _MARKED.discard(target)


def marked_module_types() -> tuple[type[torch.nn.Module], ...]:
    """The nn.Module types marked so far (an fx trace keeps them as leaves)."""
    return tuple(t for t in _MARKED if isinstance(t, type))


def is_marked(node: fx.Node, root: torch.nn.Module) -> bool:
    """Whether `node` calls a marked target, directly or inside a marked module type."""
    if node.op == "call_module":
        module = root.get_submodule(str(node.target))
        return any(isinstance(module, t) for t in marked_module_types())
    if node.op not in ("call_function", "call_method"):
        return False
    if _target_marked(node.target):
        return True
    stack = node.meta.get("nn_module_stack", {})
    types = marked_module_types()
    return bool(types) and any(_names_marked_type(entry, types) for entry in stack.values())


def _target_marked(target: Any) -> bool:
    if target in _MARKED or getattr(target, "overloadpacket", None) in _MARKED:
        return True
    name = _op_name(target)
    return name is not None and any(_op_name(m) == name for m in _MARKED if not isinstance(m, type))


def _op_name(target: Any) -> str | None:
    """`aten.x.default`, `aten.x` and torch's `x` function all read as "x"; other targets have no name."""
    packet = getattr(target, "overloadpacket", target)
    if isinstance(packet, torch._ops.OpOverloadPacket):
        return packet.__name__
    module = getattr(target, "__module__", None) or ""
    if callable(target) and (
        module.startswith("torch") or type(target).__name__ == "builtin_function_or_method"
    ):
        return getattr(target, "__name__", None)
    return None


def _names_marked_type(entry: Any, types: tuple[type, ...]) -> bool:
    """An nn_module_stack entry is (path, type or qualified type name)."""
    kind = entry[1] if isinstance(entry, tuple) else entry
    if isinstance(kind, type):
        return issubclass(kind, types)
    return any(str(kind).endswith(t.__qualname__) for t in types)


def _check_target(target: Any) -> None:
    if isinstance(target, type):
        if not issubclass(target, torch.nn.Module):
            raise ConfigError(
                f"mark_uncapturable takes an op, a function or an nn.Module type, got {target!r}"
            )
        return
    if not callable(target):
        raise ConfigError(f"mark_uncapturable takes an op, a function or an nn.Module type, got {target!r}")
