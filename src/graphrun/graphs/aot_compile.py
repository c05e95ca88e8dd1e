"""Ahead-of-time compilation with AOTInductor: what compile=True tries first (graphs/compile.py).

Why: a torch.compile start-up re-traces the callable with dynamo, rebuilds its guards and reloads its
kernels even when every artifact comes from a warm cache (3.0 s of the MLP's first 8.2 s on an H100).
torch.export + AOTInductor turn the callable into one shared library packaged as a .pt2 file; loading
that package runs no dynamo and no code generation, so a restart pays milliseconds.

Shapes: one export with the batch dim dynamic (a torch.export.Dim shared by every batched input, 1 up to
the top rung); when export refuses the dynamic dim, one static export per rung.

Weights: a package holds no weight values (constants are neither packaged nor inlined into kernels). On
every load, compiled or read from the cache, the model is pointed at the live parameters and buffers
of the callable's modules (`load_constants`, user-managed: no copy). So a stored package never runs
stale weights, needs no hash of weight values, doubles no memory, and sees in-place weight updates as a
CUDA graph does. A compiled constant with no live source (a tensor captured by a plain closure, a tensor
built inside forward) refuses the package: the callable then goes to torch.compile.

Stream: the loaded model runs on the caller's current CUDA stream, single-threaded (no container
events or locks), so a CUDA graph captured around it records its kernels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as torch_pytree
from torch.utils._python_dispatch import _get_current_dispatch_mode

# inductor settings that keep weight values out of the package: not embedded in the library, not
# inlined as literals into kernels (small 1-D and 0-d tensors are, by default), not folded (freezing)
_NO_BAKED_WEIGHTS = {
    "aot_inductor.package_constants_in_so": False,
    "always_keep_tensor_constants": True,
    "freezing": False,
}
MODEL_NAME = "model"  # the name torch gives the single model of a package


class AotRefused(Exception):
    """The callable (or a package of it) cannot run ahead-of-time compiled; the message says why."""


@dataclass(frozen=True, slots=True)
class CallLayout:
    """How a call's (args, kwargs) map to the flat tensors the compiled model takes.

    leaves: the top rung's leaves (non-tensor leaves are baked into the compiled code and the cache
    key); tensor_at: positions of tensor leaves; batch_dims: per tensor leaf, the dim that follows the
    rung (None: not batched). sizes: the rungs.
    """

    spec: torch_pytree.TreeSpec
    leaves: tuple[Any, ...]
    tensor_at: tuple[int, ...]
    batch_dims: tuple[int | None, ...]
    sizes: tuple[int, ...]

    def tensors(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
        """The tensor leaves of one call, in the compiled model's input order."""
        leaves = torch_pytree.tree_leaves((args, kwargs))
        return [leaves[i] for i in self.tensor_at]


def layout_of(calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]], sizes: Sequence[int]) -> CallLayout:
    """The layout from the (args, kwargs) of the top rung and, when there is one, the rung below it:
    a tensor dim that differs between the two is the batch dim."""
    leaves, spec = torch_pytree.tree_flatten(calls[0])
    below = torch_pytree.tree_leaves(calls[1]) if len(calls) > 1 else leaves
    tensor_at = tuple(i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor))
    batch_dims = tuple(_batch_dim(leaves[i], below[i]) for i in tensor_at)
    return CallLayout(spec, tuple(leaves), tensor_at, batch_dims, tuple(sizes))


def _batch_dim(top: torch.Tensor, below: torch.Tensor) -> int | None:
    differs = [d for d, (a, b) in enumerate(zip(top.shape, below.shape, strict=True)) if a != b]
    return differs[0] if differs else None


class _FlatCall(torch.nn.Module):
    """The callable as a module of flat tensor inputs, with the modules that hold its weights
    registered under `owners` (so export names each weight by a path the live module still has)."""

    def __init__(self, fn: Callable[..., Any], layout: CallLayout) -> None:
        super().__init__()
        self.owners = torch.nn.ModuleList(_owners_of(fn))
        self._call: Callable[..., Any]
        object.__setattr__(self, "_call", fn)  # not registered twice: a module fn is owners[0]
        self._layout = layout

    def forward(self, *tensors: torch.Tensor) -> Any:
        leaves = list(self._layout.leaves)
        for i, x in zip(self._layout.tensor_at, tensors, strict=True):
            leaves[i] = x
        args, kwargs = torch_pytree.tree_unflatten(leaves, self._layout.spec)
        return self._call(*args, **kwargs)

    def live_constants(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of the owners, by the name a compiled constant carries."""
        named = [*self.named_parameters(remove_duplicate=False), *self.named_buffers(remove_duplicate=False)]
        return {name: t.detach() for name, t in named}


def _owners_of(fn: Callable[..., Any]) -> list[torch.nn.Module]:
    """The modules whose weights `fn` reads: itself, the module of a bound method, modules in its closure."""
    if isinstance(fn, torch.nn.Module):
        return [fn]
    owners: list[torch.nn.Module] = []
    bound = getattr(fn, "__self__", None)
    if isinstance(bound, torch.nn.Module):
        owners.append(bound)
    for cell in getattr(getattr(fn, "__func__", fn), "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, torch.nn.Module) and all(value is not o for o in owners):
            owners.append(value)
    return owners


def package_paths(stem: Path, layout: CallLayout, dynamic: bool) -> dict[int | None, Path]:
    """Where the packages of one key live (stem: folder and key): one for every rung (None) or one
    per rung size."""
    if dynamic:
        return {None: stem.parent / f"{stem.name}.pt2"}
    return {size: stem.parent / f"{stem.name}.b{size}.pt2" for size in layout.sizes}


def stored_packages(stem: Path, layout: CallLayout) -> dict[int | None, Path] | None:
    """The packages stored under `stem`, or None when not all of one kind are there."""
    for dynamic in (True, False):
        paths = package_paths(stem, layout, dynamic)
        if all(p.is_file() for p in paths.values()):
            return paths
    return None


def compile_packages(fn: Callable[..., Any], layout: CallLayout, stem: Path) -> dict[int | None, Path]:
    """Export `fn` (batch dim dynamic, else once per rung) and compile each export to a package."""
    from torch._inductor import aoti_compile_and_package  # imports dynamo: only when compiling

    wrapper = _FlatCall(fn, layout)
    top = layout.tensors(*torch_pytree.tree_unflatten(list(layout.leaves), layout.spec))
    try:
        programs: dict[int | None, Any] = {None: _export(wrapper, top, layout)}
    except Exception:
        if len(layout.sizes) == 1 or all(d is None for d in layout.batch_dims):
            raise
        programs = {size: _export(wrapper, _rows(top, layout, size), None) for size in layout.sizes}
    live = wrapper.live_constants()
    for program in programs.values():
        _check_constants([spec.target for spec in program.graph_signature.input_specs], live)
    paths = package_paths(stem, layout, None in programs)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for size, program in programs.items():
        partial = paths[size].parent / f"{paths[size].name}.{os.getpid()}.partial.pt2"
        aoti_compile_and_package(program, package_path=str(partial), inductor_configs=dict(_NO_BAKED_WEIGHTS))
        partial.replace(paths[size])  # atomic: a concurrent start-up never reads half a package
    return paths


def _export(wrapper: _FlatCall, tensors: list[torch.Tensor], layout: CallLayout | None) -> Any:
    """One export: the batch dims dynamic (layout given) or all static (layout None)."""
    dynamic = None
    if layout is not None:
        batch = torch.export.Dim("batch", min=1, max=max(layout.sizes))
        dynamic = (tuple(None if d is None else {d: batch} for d in layout.batch_dims),)
    with torch.no_grad():
        return torch.export.export(wrapper, tuple(tensors), dynamic_shapes=dynamic, strict=False)


def _rows(tensors: list[torch.Tensor], layout: CallLayout, size: int) -> list[torch.Tensor]:
    """The top rung's tensors cut to `size` along their batch dims."""
    return [t if d is None else t.narrow(d, 0, size) for t, d in zip(tensors, layout.batch_dims, strict=True)]


class AotCompiled:
    """The loaded package(s) of a callable: a call runs the compiled model of its batch size.

    Under a TorchDispatchMode (the sim backend's recorder, a profiler or fake-tensor mode) a call runs
    the callable itself, as dynamo does for torch.compile: the package's C++ kernels would bypass the
    mode unseen. CUDA graph capture uses no such mode.
    """

    def __init__(self, fn: Callable[..., Any], layout: CallLayout, paths: dict[int | None, Path]) -> None:
        self._fn = fn
        self._layout = layout
        self._wrapper = _FlatCall(fn, layout)  # keeps the live weights the models point at alive
        live = self._wrapper.live_constants()
        device = _device_index(layout)
        self._models = {size: _load(path, live, device) for size, path in paths.items()}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _get_current_dispatch_mode() is not None:
            return self._fn(*args, **kwargs)
        tensors = self._layout.tensors(args, kwargs)
        model = self._models.get(None)
        if model is None:
            dims = zip(tensors, self._layout.batch_dims, strict=True)
            model = self._models[next(t.shape[d] for t, d in dims if d is not None)]
        return model(*tensors)


def _device_index(layout: CallLayout) -> int:
    for i in layout.tensor_at:
        device = layout.leaves[i].device
        if device.type == "cuda":
            return int(device.index or 0)
    return -1


def _load(path: Path, live: dict[str, torch.Tensor], device_index: int) -> _Model:
    """Load one package, single-threaded (graph capture), its constants pointed at the live tensors.

    Built on torch's package loader directly: torch's `aoti_load_package` imports dynamo (seconds)
    and probes the CPU's vector ISA by compiling test programs, only to warn; the cache key already
    names the device.
    """
    loader = torch._C._aoti.AOTIModelPackageLoader(str(path), MODEL_NAME, True, 1, device_index)
    names = loader.get_constant_fqns()
    _check_constants(names, live)
    # (constants, use_inactive, check_full_update, user_managed): point at the live tensors, no copy
    loader.load_constants({n: live[n] for n in names}, False, True, True)
    return _Model(loader)


def _check_constants(names: Sequence[str | None], live: dict[str, torch.Tensor]) -> None:
    """Refuse a program or package that reads a tensor the live modules do not hold (None: a user input)."""
    unknown = [n for n in names if n is not None and n not in live]
    if unknown:
        raise AotRefused(
            f"constant {unknown[0]!r} is no parameter or buffer of the callable's modules "
            "(a tensor from a closure or built in forward): a stored package could run it stale"
        )


class _Model:
    """One loaded package: flat input tensors in, the callable's output structure out."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._out_spec = torch_pytree.treespec_loads(loader.get_call_spec()[1])

    def __call__(self, *tensors: torch.Tensor) -> Any:
        return torch_pytree.tree_unflatten(self._loader.boxed_run(list(tensors)), self._out_spec)
