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

RECOMPILE_HEADROOM = 8  # dynamo's recompile limit during the compile phase: rungs + this


class CompiledFn:
    """A callable compiled on first `prepare`; calls go to the compiled code once it proved equal."""

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        cache_dir: str | None,
        tolerance: tuple[float, float] | None,
    ) -> None:
        self.fn = fn
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
        key = cache_key(self.fn, rungs, device_name(rungs[-1])) if self._cache is not None else ""
        cache = CacheUse.OFF
        if self._cache is not None:
            cache = CacheUse.HIT if self._cache.load(key) else CacheUse.MISS
        start = time.perf_counter()
        compiled = torch.compile(self.fn, backend="inductor", mode="default")
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
                problem = mismatch(g, w, self._tolerance)
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


def _why(exc: BaseException) -> str:
    """The root cause of a failed compile, on one line."""
    cause = root_cause(exc)
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0][:300]}" if text else type(cause).__name__
