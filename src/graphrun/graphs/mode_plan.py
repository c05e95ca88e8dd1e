"""What a runner captures under its graph mode: the callable and backend capture uses, or why none.

FULL captures the callable whole with the real backend. PIECEWISE captures the split callable
(piecewise/plan.py) through a PiecewiseBackend wrapping the real one; a callable that cannot be traced
leaves every rung eager with reason untraceable. NONE captures nothing (reason mode_none). A backend
with no graphs (backend="auto" on CPU tensors) leaves every rung eager whatever the mode.
FULL_AND_PIECEWISE is a FULL runner that owns a PIECEWISE one (runner.py); this plans the FULL part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphrun.graphs.backends import Backend, EagerBackend
from graphrun.graphs.compile import CompiledFn
from graphrun.graphs.inputs import InputLayout
from graphrun.graphs.modes import CudaGraphMode
from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.piecewise import Untraceable, build_plan
from graphrun.graphs.piecewise.plan import PiecewiseCallable
from graphrun.graphs.status import CaptureFailure


@dataclass(frozen=True, slots=True)
class ModePlan:
    """The callable capture records, the backend it records with, and, when no rung can have a graph,
    the reason and its detail."""

    fn: Callable[..., Any]
    backend: Backend
    mode: CudaGraphMode
    all_eager: tuple[CaptureFailure, str] | None = None
    splits: tuple[str, ...] = ()

    def capture_fn(self, fn: Callable[..., Any], name: str, options: RunnerOptions) -> Callable[..., Any]:
        """What capture records: the planned callable, or with compile=True that callable compiled whole
        (FULL) or the piecewise split with each segment compiled and the eager splits as they are
        (PIECEWISE), keyed by the user's `fn`. Eager fallbacks run `fn` itself either way."""
        if not options.compile:
            return self.fn
        compile_with = None
        split = self.fn
        if isinstance(split, PiecewiseCallable):

            def compile_with(_: Callable[..., Any]) -> Callable[..., Any]:
                return split.compiled()

        return CompiledFn(
            self.fn,
            name,
            options.compile_cache_dir,
            options.tolerance,
            compile_with=compile_with,
            identity=fn,
            key_extra=";".join(self.splits),
        )


def plan_mode(
    fn: Callable[..., Any],
    example: tuple[tuple[Any, ...], dict[str, Any]],
    inputs: InputLayout,
    backend: Backend,
    options: RunnerOptions,
) -> ModePlan:
    """The ModePlan of `fn` under options.mode (see the module docstring)."""
    mode = options.graph_mode
    if mode is CudaGraphMode.NONE:
        return ModePlan(fn, backend, mode, (CaptureFailure.MODE_NONE, "mode none: graphs are off"))
    if isinstance(backend, EagerBackend):  # backend="auto" without CUDA tensors
        return ModePlan(fn, backend, mode, (CaptureFailure.NO_GRAPH_BACKEND, backend.why))
    if mode is not CudaGraphMode.PIECEWISE:
        return ModePlan(fn, backend, mode)
    plan = build_plan(fn, example, inputs, backend, options.split_predicate)
    if isinstance(plan, Untraceable):
        return ModePlan(fn, backend, mode, (CaptureFailure.UNTRACEABLE, plan.reason))
    return ModePlan(plan.fn, plan.backend, mode, splits=plan.describe())
