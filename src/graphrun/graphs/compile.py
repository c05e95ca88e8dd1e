"""Compiling a callable before it is captured (RunnerOptions.compile).

The graph then records inductor's fused kernels instead of the eager ones. Compilation happens in one
timed phase before capture, so start-up logs compile and capture seconds apart.

Two compilers, tried in order (issue 15: a restart must spend <= 10% of the first compile):
1. AOTInductor (graphs/aot_compile.py): torch.export with the batch dim dynamic, compiled to a .pt2
   package. With a cache folder, a restart loads the package and runs no dynamo at all.
2. torch.compile (inductor, its own CUDA graphs off: graphrun captures), where export cannot take the
   callable, AOTInductor fails, or its output differs. Largest rung first; dynamo's automatic dynamic
   shapes keep it to about three compiles whatever the number of rungs. A restart re-traces with dynamo
   and reloads torch's mega-cache (a few seconds). Why AOTInductor was refused is logged and kept in
   the report (`aot_refused`), and in the cache folder, so a restart goes straight to torch.compile.
A piecewise split compiles its segments with torch.compile (the split points are eager Python).
CUDA callables go to torch.compile too, for now: AOTInductor's package loader crashed the process
(SIGSEGV, in AOTIModelPackageLoader) on its first GPU run (H100, torch 2.11+cu130, 2026-12-07), and a
crash cannot fall back. The refusal names that reason; AOTInductor stays the first choice on the CPU.

A compile whose output at the top rung differs from the callable's own beyond the dtype tolerance, or
that fails with both compilers, leaves the callable uncompiled for the life of the process (logged
once, in status). Eager fallbacks (a batch above the top rung) run the uncompiled callable.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from graphrun.graphs.aot_compile import AotCompiled, compile_packages, layout_of, stored_packages
from graphrun.graphs.compile_cache import CompileCache, cache_key, device_name
from graphrun.graphs.failure import root_cause
from graphrun.graphs.pytree import leaves_of
from graphrun.graphs.status import CacheUse, CompileBackend, CompileOutcome, CompileReport
from graphrun.graphs.verify import mismatch

log = logging.getLogger("graphrun.graphs.runner")

CUDA_AOT_REFUSED = (
    "AOTInductor is not used on CUDA: its package loader crashed the process on the first GPU run "
    "(torch 2.11); torch.compile instead"
)

# the largest relative error (norm of the difference over the norm) a compiled output may show per dtype
COMPILE_RELATIVE_ERROR = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 2e-3,
    torch.bfloat16: 1e-2,
}
RECOMPILE_HEADROOM = 8  # dynamo's recompile limit during the compile phase: rungs + this


class CompiledFn:
    """A callable compiled on first `prepare`; calls go to the compiled code once it proved equal."""

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        cache_dir: str | None,
        tolerance: tuple[float, float] | None,
        *,
        compile_with: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
        identity: Callable[..., Any] | None = None,
        key_extra: str = "",
    ) -> None:
        """compile_with(fn) -> the compiled callable (default: torch.compile with inductor; a piecewise
        callable compiles its segments instead); identity: what the cache key names (default fn, e.g.
        the user's module when fn is graphrun's split of it); key_extra: more text for the key."""
        self.fn = fn
        self._compile_with = compile_with or _inductor
        self._whole = compile_with is None  # the callable is compiled whole: AOTInductor can take it
        self._identity = fn if identity is None else identity
        self._key_extra = key_extra
        self._name = name
        self._cache = CompileCache(cache_dir) if cache_dir is not None else None
        self._tolerance = tolerance
        self._active: Callable[..., Any] = fn
        self.report: CompileReport | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._active(*args, **kwargs)

    def prepare(self, call_at: Callable[[int, Callable[..., Any]], Any], rungs: Sequence[Sequence[Any]],
                sizes: Sequence[int]) -> CompileReport:  # fmt: skip
        """Compile (AOTInductor, else torch.compile), check the top rung against the callable, run
        every rung once, and store the artifacts.

        call_at(rung, fn) runs fn on that rung's static inputs; rungs holds each rung's input leaves
        (for the cache key). Runs once: a second capture pass reuses the compiled code.
        """
        if self.report is not None:
            return self.report
        key = ""
        if self._cache is not None:
            key = cache_key(self._identity, rungs, device_name(rungs[-1]), self._key_extra)
        start = time.perf_counter()
        refused = "a piecewise split compiles its segments with torch.compile"
        if self._whole:
            aot, refused = self._try_aot(call_at, sizes, key, start)
            if aot is not None:
                self.report = aot
                self._log(aot)
                return aot
            log.warning("runner %s: AOTInductor refused (%s): using torch.compile", self._name, refused)
        report = self._torch_compile(call_at, sizes, key, start)
        self.report = dataclasses.replace(report, aot_refused=refused)
        self._log(self.report)
        return self.report

    def _try_aot(self, call_at: Callable[[int, Callable[..., Any]], Any], sizes: Sequence[int], key: str,
                 start: float) -> tuple[CompileReport | None, str]:  # fmt: skip
        """AOTInductor: load the stored package(s) of `key`, else export and compile them. The report
        when the compiled code runs and matches, else (None, why not); a refusal is remembered."""
        earlier = self._cache.aot_refused(key) if self._cache is not None else None
        if earlier is not None:
            return None, earlier
        try:
            report = self._aot(call_at, sizes, key, start)
        except Exception as exc:
            reason = _why(exc)
        else:
            if report.outcome is CompileOutcome.COMPILED:
                return report, ""
            reason = f"{report.outcome}: {report.detail}"
        if self._cache is not None:
            self._cache.refuse_aot(key, reason)
        return None, reason

    def _aot(self, call_at: Callable[[int, Callable[..., Any]], Any], sizes: Sequence[int], key: str,
             start: float) -> CompileReport:  # fmt: skip
        def record(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return args, kwargs

        layout = layout_of([call_at(size, record) for size in reversed(sizes[-2:])], sizes)
        if any(layout.leaves[i].device.type == "cuda" for i in layout.tensor_at):
            raise NotImplementedError(CUDA_AOT_REFUSED)
        with tempfile.TemporaryDirectory(prefix="graphrun-aot-") as scratch:
            stem = Path(scratch) / "model" if self._cache is None else self._cache.package_stem(key)
            paths = stored_packages(stem, layout) if self._cache is not None else None
            cache = CacheUse.OFF if self._cache is None else CacheUse.HIT if paths else CacheUse.MISS
            if paths is None:
                paths = compile_packages(self.fn, layout, stem)
            compiled = AotCompiled(self.fn, layout, paths)
        report = self._check_rungs(compiled, call_at, sizes, cache, start, CompileBackend.AOT_INDUCTOR)
        if report.outcome is CompileOutcome.COMPILED:
            self._active = compiled
            log.debug("runner %s: AOTInductor packages %s", self._name, [str(p) for p in paths.values()])
        return report

    def _torch_compile(self, call_at: Callable[[int, Callable[..., Any]], Any], sizes: Sequence[int],
                       key: str, start: float) -> CompileReport:  # fmt: skip
        """torch.compile at every rung (largest first), with torch's mega-cache loaded and saved."""
        cache = CacheUse.OFF
        if self._cache is not None:
            cache = CacheUse.HIT if self._cache.load(key) else CacheUse.MISS
        compiled = self._compile_with(self.fn)
        limit = len(sizes) + RECOMPILE_HEADROOM
        try:
            with torch._dynamo.config.patch(recompile_limit=limit, accumulated_recompile_limit=limit * 4):
                backend = CompileBackend.TORCH_COMPILE
                report = self._check_rungs(compiled, call_at, sizes, cache, start, backend)
        except Exception as exc:
            return CompileReport(CompileOutcome.FAILED, time.perf_counter() - start, cache, _why(exc))
        if report.outcome is CompileOutcome.COMPILED:
            self._active = compiled
            if self._cache is not None and cache is CacheUse.MISS:
                nbytes = self._cache.save(key)
                log.debug("runner %s: compile artifacts saved, %d bytes, %s", self._name, nbytes, key)
        return report

    def _check_rungs(
        self,
        compiled: Callable[..., Any],
        call_at: Callable[[int, Callable[..., Any]], Any],
        sizes: Sequence[int],
        cache: CacheUse,
        start: float,
        backend: CompileBackend,
    ) -> CompileReport:
        """Compare the compiled output with the callable's at the top rung, then run every other rung."""
        top = sizes[-1]
        got = call_at(top, compiled)
        problem = self._differs(got, call_at(top, self.fn))
        if problem is not None:
            seconds = time.perf_counter() - start
            return CompileReport(CompileOutcome.MISMATCH, seconds, cache, problem, backend)
        for rung in reversed(sizes[:-1]):
            call_at(rung, compiled)
        return CompileReport(CompileOutcome.COMPILED, time.perf_counter() - start, cache, backend=backend)

    def _differs(self, got: Any, want: Any) -> str | None:
        for i, (g, w) in enumerate(zip(leaves_of(got), leaves_of(want), strict=True)):
            if isinstance(g, torch.Tensor) and isinstance(w, torch.Tensor):
                problem = mismatch(g, w, self._tolerance) if self._tolerance else relative_error(g, w)
                if problem is not None:
                    return f"output {i}: {problem}"
        return None

    def _log(self, report: CompileReport) -> None:
        if report.outcome is CompileOutcome.COMPILED:
            log.info(
                "runner %s: compiled in %.2f s by %s (compile cache %s)",
                self._name, report.seconds, report.backend, report.cache,
            )  # fmt: skip
            return
        log.warning(
            "runner %s: runs uncompiled for the life of the process: compile %s (%s)",
            self._name, report.outcome, report.detail,
        )  # fmt: skip


def _inductor(fn: Callable[..., Any]) -> Callable[..., Any]:
    """torch.compile with inductor, its own CUDA graphs off (mode "default"): graphrun captures."""
    return torch.compile(fn, backend="inductor", mode="default")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> str | None:
    """None when `got` is within the dtype's relative error of `want` (norm of the difference over the
    norm of `want`), else a one-line description; integer outputs must be equal.

    Compiled code fuses ops and keeps intermediates in float32, so low-precision outputs differ from
    eager's by a few units in the last place spread over the tensor: an element-wise tolerance meant for
    replaying the same kernels refuses that, while a wrong result is off by a relative error near 1.
    """
    if got.shape != want.shape or got.dtype != want.dtype or not got.is_floating_point():
        return mismatch(got, want)
    g, w = got.double(), want.double()
    error = float((g - w).norm() / w.norm().clamp_min(1e-30))
    limit = COMPILE_RELATIVE_ERROR.get(got.dtype, 1e-4)
    return None if error <= limit else f"relative error {error:.3g} > {limit} (vs the uncompiled callable)"


def _why(exc: BaseException) -> str:
    """The root cause of a failed compile, on one line."""
    cause = root_cause(exc)
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0][:300]}" if text else type(cause).__name__
