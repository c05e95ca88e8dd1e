"""Compiled artifacts on disk, so a restart skips inductor's code generation and autotuning.

torch.compile keeps its own caches (FX graphs, AOT autograd, Triton kernels, autotuning) in a per-user
temporary folder that a container restart wipes. After a compile, `torch.compiler.save_cache_artifacts`
bundles what this process compiled into one blob; before the next compile, `load_cache_artifacts` puts it
back into those caches. One file per key under the cache folder; the key hashes what the compiled code
depends on: the callable (its type and parameter shapes for a module, its code for a function), the
input shapes and dtypes of every rung, the device, and the torch and graphrun versions. Weights' values
are not in it: they are inputs of the compiled code, not constants.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from graphrun.version import __version__

log = logging.getLogger(__name__)

SUFFIX = ".graphrun-compile"


def callable_identity(fn: Callable[..., Any]) -> str:
    """What the compiled code of `fn` depends on besides its inputs: its class and parameter layout
    for a module, its qualified name and bytecode for a function."""
    if isinstance(fn, torch.nn.Module):
        params = [
            f"{name}:{tuple(p.shape)}:{p.dtype}" for name, p in (*fn.named_parameters(), *fn.named_buffers())
        ]
        return f"{type(fn).__module__}.{type(fn).__qualname__}|" + ",".join(params)
    inner = getattr(fn, "__func__", fn)
    code = getattr(inner, "__code__", None)
    body = hashlib.sha256(code.co_code).hexdigest()[:16] if code is not None else repr(type(fn))
    return f"{getattr(inner, '__module__', '?')}.{getattr(inner, '__qualname__', '?')}|{body}"


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
            return leaf.device.type
    return "cpu"


class CompileCache:
    """One folder of compiled artifacts; load before compiling, save after a compile that missed."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        """Where the artifacts of `key` live."""
        return self.folder / key

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
