"""Compiling a callable with torch.compile before it is captured (RunnerOptions.compile).

The graph then records inductor's fused kernels instead of the eager ones. Inductor's own CUDA graphs
stay off (mode "default"): graphrun captures. Compilation happens in one timed phase before capture,
largest rung first, so start-up logs compile and capture seconds apart; the capture's warm-up calls
then hit dynamo's cache. Dynamo's automatic dynamic shapes keep the count of compiles to about three
(the top rung static, then one graph dynamic in the batch dim, plus size 1, which dynamo specialises)
whatever the number of rungs.

A compile that fails, or whose output at the top rung differs from the callable's own beyond the dtype
tolerance, leaves the callable uncompiled for the life of the process (logged once, in status). Eager
fallbacks (a batch above the top rung) run the uncompiled callable: a new shape would recompile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from graphrun.graphs.compile_cache import CompileCache, cache_key, device_name
from graphrun.graphs.failure import root_cause
from graphrun.graphs.pytree import leaves_of
from graphrun.graphs.status import CacheUse, CompileOutcome, CompileReport
from graphrun.graphs.verify import mismatch

log = logging.getLogger("graphrun.graphs.runner")

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
        """Compile at every rung (largest first), check the top rung against the callable, then save.

        call_at(rung, fn) runs fn on that rung's static inputs; rungs holds each rung's input leaves
        (for the cache key). Runs once: a second capture pass reuses the compiled code.
        """
        if self.report is not None:
            return self.report
        key = ""
        if self._cache is not None:
            key = cache_key(self._identity, rungs, device_name(rungs[-1]), self._key_extra)
        cache = CacheUse.OFF
        if self._cache is not None:
            cache = CacheUse.HIT if self._cache.load(key) else CacheUse.MISS
        start = time.perf_counter()
        compiled = self._compile_with(self.fn)
        try:
            self.report = self._compile_rungs(compiled, call_at, sizes, cache, start)
        except Exception as exc:
            self.report = CompileReport(CompileOutcome.FAILED, time.perf_counter() - start, cache, _why(exc))
        if self.report.outcome is CompileOutcome.COMPILED:
            self._active = compiled
            if self._cache is not None and cache is CacheUse.MISS:
                nbytes = self._cache.save(key)
                log.debug("runner %s: compile artifacts saved, %d bytes, %s", self._name, nbytes, key)
        self._log(self.report)
        return self.report

    def _compile_rungs(
        self,
        compiled: Callable[..., Any],
        call_at: Callable[[int, Callable[..., Any]], Any],
        sizes: Sequence[int],
        cache: CacheUse,
        start: float,
    ) -> CompileReport:
        limit = len(sizes) + RECOMPILE_HEADROOM
        with torch._dynamo.config.patch(recompile_limit=limit, accumulated_recompile_limit=limit * 4):
            top = sizes[-1]
            got = call_at(top, compiled)
            problem = self._differs(got, call_at(top, self.fn))
            if problem is not None:
                return CompileReport(CompileOutcome.MISMATCH, time.perf_counter() - start, cache, problem)
            for rung in reversed(sizes[:-1]):
                call_at(rung, compiled)
        return CompileReport(CompileOutcome.COMPILED, time.perf_counter() - start, cache)

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
                "runner %s: compiled in %.2f s (compile cache %s)", self._name, report.seconds, report.cache
            )
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
