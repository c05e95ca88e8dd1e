"""A runner's calls: pick the batch size's plan, copy in, replay, count; or run eager, counted and why.

This is the hot path: `graphrun bench zoo` charges everything it does before the replay launch to the
runner's overhead over a bare replay, and benchmarks/runner_overhead.py measures it on the CPU. So the
work a replayed call of a batch size does is worked out once into its CallPlan (call_plan.py), made on
the size's first call since its rung last changed and kept in a list indexed by batch size; a call then
only executes it, with locals: no narrow(), no pytree walk for plain positional tensors, no lookup by
kind, no logging. Anything a plan does not accept (a new size, a bad input) takes the slow path: full
validation (inputs.py), which raises naming the bad input, or says why the call runs eager.

Replays share the static buffers, so they hold the call lock; eager calls do not. The owner of the
graphs (the runner) swaps in a new rung table with drop_plans(), and sets `capturing` while a background
capture holds the lock, so calls run eager instead of waiting for it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any, Protocol

import torch

from graphrun.errors import GraphInputError
from graphrun.graphs.call_plan import CallPlan, plan_call
from graphrun.graphs.failure import DynamicInputError
from graphrun.graphs.inputs import InputLayout
from graphrun.graphs.pytree import StructureMismatch, TreeSpec, describe
from graphrun.graphs.rung_table import RungTable
from graphrun.graphs.size_histogram import count_size
from graphrun.graphs.status import REPLAY_BUCKETS, CallFallback, RunnerStats

log = logging.getLogger("graphrun.graphs.runner")

_FLATTEN_ERRORS = (StructureMismatch, KeyError, IndexError, TypeError)
_NOT_A_BATCH = (AttributeError, IndexError, TypeError)  # the first leaf has no batch size that is planned


class OtherRunner(Protocol):
    """The runner a call without a FULL rung may go to (FULL_AND_PIECEWISE: the piecewise one)."""

    def rung_for(self, batch_size: int) -> int | None:
        """Its captured rung for `batch_size`, or None."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run one call."""


class CallPath:
    """One runner's calls over its input layout and rung table; statistics go to `stats`."""

    def __init__(
        self,
        fn: Callable[..., Any],
        inputs: InputLayout,
        rungs: RungTable,
        stats: RunnerStats,
        name: str,
        *,
        clone_outputs: bool,
        inference_mode: bool,
    ) -> None:
        self.lock = threading.Lock()
        self.capturing = False  # a background capture holds the lock now: calls run eager
        self.piecewise: OtherRunner | None = None
        self._fn = fn
        self._inputs = inputs
        self._rungs = rungs
        self._stats = stats
        self._name = name
        self._clone_outputs = clone_outputs
        self._inference_mode = inference_mode
        self._in_spec: TreeSpec = inputs.in_spec
        self._flatten = inputs.in_spec.flatten
        # inputs that are k positional leaves and nothing else: a call's args tuple is its leaves
        self._num_args = _plain_positional(inputs.in_spec)
        self._first = inputs.batched[0].index  # the leaf whose batch dimension sizes the call
        self._batch_dim = inputs.batched[0].dim
        self._plans: list[CallPlan | None] = [None] * (inputs.sizes[-1] + 1)  # batch size -> its plan

    def drop_plans(self) -> None:
        """Forget every plan (the rung table changed): each size makes its plan again on its next call."""
        self._plans = [None] * len(self._plans)

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one call: replay its batch size's plan, else eager (counted)."""
        leaves = args if len(args) == self._num_args and not kwargs else self._leaves(args, kwargs)
        first = leaves[self._first]
        try:
            shape = first.shape
            plan = self._plans[shape[self._batch_dim]]
        except _NOT_A_BATCH:
            plan = None
        if (
            plan is None
            or shape != plan.shape
            or first.dtype is not plan.dtype
            or first.device != plan.device
            or (plan.more_checks and not plan.accepts(leaves))
        ):
            plan = self._plan_for(leaves)
            if plan is None:
                return self._without_rung(leaves, args, kwargs)
        self._stats.batch_size_counts[plan.n] += 1
        if self.capturing:  # a background capture holds the static buffers: run eager, do not wait
            return self.eager(CallFallback.CAPTURING, args, kwargs)
        with self.lock:
            start = perf_counter()
            for i, dst, ptr in plan.copies:  # inputs.write_inputs, inlined
                leaf = leaves[i]
                if leaf is not dst and leaf.data_ptr() != ptr:
                    dst.copy_(leaf.detach() if leaf.requires_grad else leaf)
            if plan.fills:
                for i, fill in plan.fills:
                    fill(leaves[i])
            if plan.pads:
                for write, arg in plan.pads:
                    write(arg)
            try:
                plan.replay()
            except Exception as exc:
                return self._replay_failed(exc, plan.rung, args, kwargs)
            out = plan.output if plan.reuse_output else plan.make_output()
            stats = self._stats
            stats.num_replayed += 1
            stats.num_graph_rows += plan.n
            stats.num_padded_rows += plan.rung - plan.n
            seconds = perf_counter() - start
            stats.replay_bucket_counts[bisect_left(REPLAY_BUCKETS, seconds)] += 1
            stats.replay_seconds_sum += seconds
        return out

    def _leaves(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """The call's leaves in flatten order; a structure unlike the example's is refused, named."""
        try:
            return self._flatten((args, kwargs))
        except _FLATTEN_ERRORS:
            raise GraphInputError(
                f"inputs have structure {describe((args, kwargs))}; the runner was built for "
                f"{self._in_spec.describe()}"
            ) from None

    def _plan_for(self, leaves: Sequence[Any]) -> CallPlan | None:
        """Validate the call (raising for a bad input) and make its batch size's plan; None: no rung."""
        n = self._inputs.validate(leaves)
        plans = self._plans  # read before the table: the owner rebuilds the table, then drops the plans
        rung = self._rungs.rung_for(n)
        if rung is None:
            return None
        outputs = self._rungs.outputs
        assert outputs is not None  # a rung holds a graph, so the outputs were learned
        replay = self._rungs.graphs[rung].replay
        plan = plan_call(n, rung, replay, self._inputs, outputs, self._clone_outputs)
        plans[n] = plan
        return plan

    def _without_rung(self, leaves: Sequence[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A valid call no rung of this runner serves: the piecewise runner's if it has one, else eager."""
        n = int(leaves[self._first].shape[self._batch_dim])
        count_size(self._stats.batch_size_counts, n)
        if self.piecewise is not None and self.piecewise.rung_for(n) is not None:
            return self.piecewise(*args, **kwargs)
        return self.eager(self._rungs.why_eager(n), args, kwargs)

    def _replay_failed(self, exc: Exception, rung: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A replay that raised: this call runs eager, counted; a broken graph is said out loud."""
        if isinstance(exc, DynamicInputError):  # piecewise: a split's output no longer fits its segment
            log.debug("runner %s: rung %d cannot replay this call: %s", self._name, rung, exc)
            return self.eager(CallFallback.DYNAMIC_SHAPE, args, kwargs)
        log.warning(
            "runner %s: replay of rung %d failed (%s); running this call eager", self._name, rung, exc
        )
        return self.eager(CallFallback.REPLAY_ERROR, args, kwargs)

    def eager(self, reason: CallFallback, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run `fn` itself for one call, counted under `reason`."""
        self._stats.count_fallback(reason)
        log.debug("runner %s: eager call (%s)", self._name, reason)
        # no_grad, not inference_mode: an eager result must be an ordinary tensor, like a replay's outputs
        with torch.no_grad() if self._inference_mode else contextlib.nullcontext():
            return self._fn(*args, **kwargs)


def _plain_positional(spec: TreeSpec) -> int:
    """k when the inputs are k positional leaves and no keyword argument (a call's args are then its
    leaves, in order); -1 for any other structure (a call is flattened)."""
    args, kwargs = spec.root.children
    if kwargs.children or any(child.kind != "leaf" for child in args.children):
        return -1
    return len(args.children)
