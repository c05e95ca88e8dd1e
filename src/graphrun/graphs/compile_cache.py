"""Compiled artifacts on disk, so a restart skips export, code generation and autotuning.

Per key the folder holds one of:
- `<key>.pt2` (or `<key>.b<size>.pt2`, one per rung): AOTInductor packages (graphs/aot_compile.py),
  loaded with no dynamo at all;
- `<key>.aot-refused`: why AOTInductor could not take this callable (so a restart does not export it
  again), next to `<key>.graphrun-compile`: torch.compile's mega-cache. torch.compile keeps its own
  caches (FX graphs, AOT autograd, Triton kernels, autotuning) in a per-user temporary folder that a
  container restart wipes; `torch.compiler.save_cache_artifacts` bundles what this process compiled into
  one blob, and `load_cache_artifacts` puts it back before the next compile.

The key hashes what the compiled code depends on: the callable (a module's class, parameter layout and
the source of the files defining its modules' classes; a function's code and source file), the input
shapes and dtypes of every rung, the device (for a CPU its instruction set: the code is built for the
machine), and the torch and graphrun versions. Weights' values are not in it: a package reads the live
module's weights at every load, and torch.compile's code takes them as inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import platform
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from graphrun.version import __version__

log = logging.getLogger(__name__)

SUFFIX = ".graphrun-compile"
REFUSED = ".aot-refused"


def callable_identity(fn: Callable[..., Any]) -> str:
    """What the compiled code of `fn` depends on besides its inputs: for a module its class, parameter
    layout and the source of its modules' classes; for a function its qualified name, code (constants
    included) and source file, plus the identity of a module it is bound to or closes over.

    A stored AOTInductor package runs without re-tracing, so code edits must change the key; an edit
    to a helper outside the files named here (and outside torch) is not seen: clear the cache folder.
    """
    if isinstance(fn, torch.nn.Module):
        return _module_identity(fn)
    inner = getattr(fn, "__func__", fn)
    code = getattr(inner, "__code__", None)
    body = _code_digest(code) if code is not None else repr(type(fn))
    parts = [f"{getattr(inner, '__module__', '?')}.{getattr(inner, '__qualname__', '?')}|{body}"]
    parts.append(_source_digest({getattr(inner, "__module__", "")}))
    bound = getattr(fn, "__self__", None)
    cells = [c.cell_contents for c in getattr(inner, "__closure__", None) or () if _filled(c)]
    parts += [_module_identity(m) for m in (bound, *cells) if isinstance(m, torch.nn.Module)]
    return "|".join(parts)


def _code_digest(code: types.CodeType) -> str:
    """A function's bytecode, names and constants (nested functions' too); stable across processes,
    unlike marshal, whose bytes follow reference counts."""
    digest = hashlib.sha256()

    def walk(c: types.CodeType) -> None:
        digest.update(c.co_code)
        digest.update(repr(c.co_names).encode())
        for const in c.co_consts:
            if isinstance(const, types.CodeType):
                walk(const)
            elif isinstance(const, frozenset):  # `x in {"a", "b"}`: its repr order follows string hashes
                digest.update(repr(sorted(map(repr, const))).encode())
            else:
                digest.update(repr(const).encode())

    walk(code)
    return digest.hexdigest()[:16]


def _module_identity(module: torch.nn.Module) -> str:
    """A module's class, parameter and buffer layout, and the source of its modules' classes."""
    named = (*module.named_parameters(), *module.named_buffers())
    params = [f"{name}:{tuple(p.shape)}:{p.dtype}" for name, p in named]
    sources = _source_digest({type(m).__module__ for m in module.modules()})
    return f"{type(module).__module__}.{type(module).__qualname__}|{sources}|" + ",".join(params)


def _source_digest(module_names: set[str]) -> str:
    """A hash of the source files of these Python modules, torch's own left out (its version is in
    the key); a module without a readable file counts by name only."""
    digest = hashlib.sha256()
    for name in sorted(n for n in module_names if n.split(".")[0] != "torch"):
        digest.update(name.encode())
        module = sys.modules.get(name)
        with contextlib.suppress(TypeError, OSError):  # a built-in or a module made in memory
            digest.update(Path(inspect.getfile(module)).read_bytes() if module is not None else b"")
    return digest.hexdigest()[:16]


def _filled(cell: Any) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True


def leaf_signature(leaf: Any) -> str:
    """A tensor's shape, dtype and device, or a plain value's repr (a scalar baked into the graph)."""
    if isinstance(leaf, torch.Tensor):
        return f"T{tuple(leaf.shape)}{tuple(leaf.stride())}:{leaf.dtype}:{leaf.device.type}"
    return repr(leaf)


def cache_key(
    fn: Callable[..., Any], rung_leaves: Sequence[Sequence[Any]], device: str, extra: str = ""
) -> str:
    """The file name (without folder) a compile of `fn` at these rungs' inputs is stored under; extra:
    anything else the compiled code depends on (a piecewise runner's split points)."""
    digest = hashlib.sha256()
    for part in (callable_identity(fn), device, torch.__version__, __version__, extra):
        digest.update(part.encode())
        digest.update(b"\0")
    for leaves in rung_leaves:
        digest.update(";".join(leaf_signature(x) for x in leaves).encode())
        digest.update(b"\1")
    return digest.hexdigest()[:32] + SUFFIX


def device_name(leaves: Sequence[Any]) -> str:
    """The device the compiled kernels target, named as precisely as torch can (GPU model included)."""
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if leaf.device.type == "cuda":
                return f"cuda:{torch.cuda.get_device_name(leaf.device)}"
            return leaf.device.type if leaf.device.type != "cpu" else cpu_name()
    return cpu_name()


def cpu_name() -> str:
    """The CPU as compiled code sees it: architecture, the vector ISA torch dispatches to, and the
    flags of the first core (AOTInductor builds with -march=native: another CPU may lack an instruction)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = hashlib.sha256(line.encode()).hexdigest()[:12]
                break
    except OSError:  # not Linux
        flags = platform.processor()
    return f"cpu:{platform.machine()}:{torch.backends.cpu.get_cpu_capability()}:{flags}"


class CompileCache:
    """One folder of compiled artifacts; load before compiling, save after a compile that missed."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        """Where the artifacts of `key` live."""
        return self.folder / key

    def package_stem(self, key: str) -> Path:
        """Where the AOTInductor packages of `key` live, without their ending."""
        return self.folder / key.removesuffix(SUFFIX)

    def aot_refused(self, key: str) -> str | None:
        """Why an earlier start-up found AOTInductor unable to take `key`'s callable, or None."""
        path = self._refused_path(key)
        if not path.is_file():
            return None
        return path.read_text().strip() or "refused at an earlier start-up"

    def refuse_aot(self, key: str, reason: str) -> None:
        """Remember that AOTInductor cannot take `key`'s callable (a restart goes to torch.compile)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._refused_path(key).write_text(reason + "\n")

    def _refused_path(self, key: str) -> Path:
        return self.folder / (key.removesuffix(SUFFIX) + REFUSED)

    def load(self, key: str) -> bool:
        """Put the stored artifacts of `key` into torch's caches; False when none (or unreadable)."""
        path = self.path(key)
        if not path.is_file():
            return False
        try:
            info = torch.compiler.load_cache_artifacts(path.read_bytes())
        except Exception as exc:  # a truncated or foreign file: compile from scratch, say why
            log.warning("compile cache %s unreadable, compiling from scratch: %s", path, exc)
            return False
        return info is not None

    def save(self, key: str) -> int:
        """Store what this process compiled under `key` (atomically); returns the bytes written."""
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return 0
        blob, _info = saved
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(key)
        partial = target.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(blob)
        partial.replace(target)
        return len(blob)
