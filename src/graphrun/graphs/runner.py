"""GraphRunner: capture a callable once per rung of a batch-size ladder, then replay it per call.

A call is validated against the example's structure, copied into the static buffers of the smallest
captured rung that fits, padded, replayed, and answered with views of the static outputs sliced to the
real batch. Anything that cannot replay runs eager and is counted; nothing falls back silently.

Padding assumes the rows of a batch are independent. Capture verifies it per rung (verify.py); a rung
that fails replays exact-size calls only. Which rung serves each batch size is decided then, into one
list, so a call pays one index for dispatch whatever the verification found.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any, Unpack

import torch
from prometheus_client import REGISTRY, CollectorRegistry

from graphrun.errors import ConfigError, GraphInputError
from graphrun.graphs.backends import CapturedGraph, EagerBackend, make_backend
from graphrun.graphs.buffers import Kind, Slot, check_scalar, check_static, check_tensor, pad_rows
from graphrun.graphs.capture import RungCapturer
from graphrun.graphs.compile import CompiledFn
from graphrun.graphs.inputs import InputLayout
from graphrun.graphs.metrics import collector_for
from graphrun.graphs.options import RunnerKeywords, RunnerOptions
from graphrun.graphs.pytree import StructureMismatch, TreeSpec, describe
from graphrun.graphs.sizes import rung_for
from graphrun.graphs.spec import CaptureResult, CaptureSpec
from graphrun.graphs.status import (
    REPLAY_BUCKETS,
    CacheUse,
    CallFallback,
    CaptureFailure,
    CompileReport,
    RungStatus,
    RunnerStats,
    RunnerStatus,
)

log = logging.getLogger(__name__)

_FLATTEN_ERRORS = (StructureMismatch, KeyError, IndexError, TypeError)


class GraphRunner:
    """Run `fn` through captured graphs, one per capture size, with eager fallback that is counted.

    Options come as keyword arguments (`sizes=[1, 2, 4], pad=0`) or as one `options=RunnerOptions(...)`
    (options.py), not both; either way they are validated before anything is allocated. The runner
    builds one CaptureSpec (spec.py) from them and the example inputs and hands it to the capture
    machinery (capture.py), which returns the graphs and statuses; the runner owns dispatch and calls.

    backend: "cuda", "sim" (the CPU simulator, for tests), a Backend instance, or "auto" (the default):
    CUDA graphs when the inputs are CUDA tensors, otherwise no graphs at all: every rung is marked eager
    (reason no_graph_backend) and every call runs `fn`, counted. `graphrun serve --graph-backend auto`
    means the same (backends.resolve_backend_name decides for both); the simulator is never automatic.

    verify_inputs(batch_size, generator) -> positional args replaces the default random inputs of
    verification, for inputs whose valid values a range cannot describe (packed metadata, indices). It is
    called with each rung's size and, for the padded check, with smaller batch sizes too.

    pad: how rows between a call's batch and its rung are filled: "repeat" (the last row), a number, or
    None (whatever the previous call left). pad="forbid" replays exact-size calls only: a batch that is
    not a rung size runs eager (counted as padding_forbidden). Padding assumes rows are independent;
    verification checks it per rung and makes a rung that couples rows exact-size only.

    inference_mode=True (default): capture and verification run under torch.inference_mode() and eager
    fallbacks under torch.no_grad(), so outputs never carry autograd history, even when fn has
    parameters that require grad; replay records none, and inputs are copied in without theirs. Outputs
    are ordinary tensors either way (not inference tensors), so they may feed a model being trained.
    Pass False for a callable that needs autograd inside (torch.autograd.grad), or to get back eager
    outputs that carry history.

    Outputs alias static buffers until the next call unless clone_outputs=True. One call at a time:
    calls are serialised by a lock, since they share the static buffers.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        example_args: Sequence[Any] | torch.Tensor,
        example_kwargs: dict[str, Any] | None = None,
        *,
        options: RunnerOptions | None = None,
        **keywords: Unpack[RunnerKeywords],
    ) -> None:
        options = _resolve_options(options, keywords)
        args = (example_args,) if isinstance(example_args, torch.Tensor) else tuple(example_args)
        inputs = InputLayout.build(args, dict(example_kwargs or {}), options)
        self.options = options
        self.sizes = inputs.sizes
        self.backend = make_backend(options.backend, inputs.device)
        register = getattr(self.backend, "register_static", None)
        if register is not None:
            register(inputs.static_buffers())
        self.stats = RunnerStats()
        self.name = self._register_metrics(fn, options.name, options.registry)
        captured_fn = fn
        if options.compile:  # graphs record the compiled code; eager fallbacks run `fn` itself
            captured_fn = CompiledFn(fn, self.name, options.compile_cache_dir, options.tolerance)
        self.spec = CaptureSpec(captured_fn, inputs, options, self.backend, self.name)
        self._capturer = RungCapturer(self.spec)
        self._bind_call_path(fn, inputs, options)
        if options.capture:
            self.capture()

    # ----- construction steps -------------------------------------------------------------------------

    def _bind_call_path(self, fn: Callable[..., Any], inputs: InputLayout, options: RunnerOptions) -> None:
        """Everything a call reads, as plain attributes: the hot path does no lookups through the spec."""
        self._fn = fn
        self._clone_outputs = options.clone_outputs
        self._pad = options.pad
        self._inference_mode = options.inference_mode
        self._lock = threading.Lock()
        self._in_spec: TreeSpec = inputs.in_spec
        self._flatten = inputs.in_spec.flatten
        self._slots = inputs.slots
        self._batched = inputs.batched
        self._shared = inputs.shared
        self._scalar_slots = inputs.scalar_slots
        self._static_slots = inputs.static_slots
        self._first = inputs.batched[0]
        self._only_batched = len(inputs.slots) == 1  # one batched tensor, nothing else: the inlined path
        self._copy_in = inputs.copy_in
        self._graphs: dict[int, CapturedGraph] = {}
        self._replays: dict[int, Callable[[], None]] = {}
        self._dispatch: list[int | None] = [None] * (self.sizes[-1] + 1)
        self._dispatch_len = len(self._dispatch)
        self._eager_reasons = [CallFallback.NOT_CAPTURED_YET] * self._dispatch_len
        # rung -> the static output leaves a replay of it writes; what n < rung rows narrow; the rebuild
        self._out_leaves: dict[int, list[Any]] = {}
        self._out_batched: Sequence[tuple[int, int]] = ()
        self._out_unflatten: Callable[[Any], Any] = _no_outputs
        # rung -> the finished output object when a call fills the whole rung (tuple or single tensor
        # outputs only: a dict or list could be mutated by the caller, so those are rebuilt per call)
        self._out_whole: dict[int, Any] = {}
        self._status: dict[int, RungStatus] = {}
        self._captured_once = False
        self._compile_report: CompileReport | None = None

    def _register_metrics(
        self, fn: Callable[..., Any], name: str | None, registry: CollectorRegistry | None
    ) -> str:
        collector = collector_for(registry if registry is not None else REGISTRY)
        base = name or getattr(fn, "__name__", None) or type(fn).__name__
        chosen = base
        if name is None:  # an automatic name never collides: suffix it
            taken = collector.names()
            suffix = 2
            while chosen in taken:
                chosen, suffix = f"{base}-{suffix}", suffix + 1
        collector.add(chosen, self.stats)
        weakref.finalize(self, collector.remove, chosen)
        return chosen

    # ----- capture ------------------------------------------------------------------------------------

    def capture(self) -> RunnerStatus:
        """Capture every rung, largest first; rungs that fail run eager, with the reason in status()."""
        self._release_graphs()
        self._status.clear()
        if isinstance(self.backend, EagerBackend):  # backend="auto" without CUDA tensors
            self._mark_all_eager(self.backend.why)
        else:
            self._install(self._capturer.capture_all())
        self._captured_once = True
        self._rebuild_dispatch()
        return self.status()

    def _install(self, result: CaptureResult) -> None:
        """Take one capture pass's graphs, statuses and counts; precompute the whole-rung outputs."""
        stats = self.stats
        stats.num_captured += result.num_captured
        stats.capture_seconds += result.capture_seconds
        if result.compile is not None:
            self._compile_report = result.compile
            stats.compile_seconds = result.compile.seconds
            stats.compile_cache_hit = result.compile.cache is CacheUse.HIT
        for reason, count in result.failures().items():
            stats.capture_failed[reason] = stats.capture_failed.get(reason, 0) + count
        self._status.update(result.statuses)
        outputs = result.outputs
        if outputs is None:  # no rung ran at all, so none holds a graph
            return
        self._out_batched = outputs.batched
        self._out_unflatten = outputs.spec.unflatten
        for rung, graph in result.graphs.items():
            self._graphs[rung] = graph
            self._replays[rung] = graph.replay
            self._out_leaves[rung] = outputs.rung_outputs(rung)
            if self._clone_outputs is False and outputs.immutable:
                self._out_whole[rung] = self._outputs(rung, rung)

    def _release_graphs(self) -> None:
        for graph in self._graphs.values():
            graph.release()
        self._graphs.clear()
        self._replays.clear()
        self._out_leaves.clear()
        self._out_whole.clear()

    def _mark_all_eager(self, why: str) -> None:
        for size in self.sizes:
            self._status[size] = RungStatus(size, False, reason=CaptureFailure.NO_GRAPH_BACKEND, detail=why)
        self.stats.capture_failed[CaptureFailure.NO_GRAPH_BACKEND] = len(self.sizes)
        log.info("runner %s: no graphs, every call runs eager (%s)", self.name, why)

    def _rebuild_dispatch(self) -> None:
        """Per batch size: its own rung if captured, else the smallest captured rung that accepts padding."""
        captured = sorted(self._graphs)
        padded = [r for r in captured if self._status[r].padded]
        for n in range(1, self.sizes[-1] + 1):
            self._dispatch[n] = n if n in self._graphs else rung_for(padded, n)
            self._eager_reasons[n] = self._eager_reason(n, captured)

    def _eager_reason(self, n: int, captured: list[int]) -> CallFallback:
        """Why batch n has no rung: none captured that fits, or those that fit replay exact sizes only."""
        if not self._captured_once:
            return CallFallback.NOT_CAPTURED_YET
        fits = [self._status[r] for r in captured if r >= n]
        if not fits:
            return CallFallback.RUNG_NOT_CAPTURED
        if any(s.reason is CaptureFailure.PADDING_MISMATCH for s in fits):
            return CallFallback.PADDING_MISMATCH
        return CallFallback.PADDING_FORBIDDEN

    def rung_for(self, batch_size: int) -> int | None:
        """The captured rung a call of `batch_size` replays, or None when it would run eager."""
        return self._dispatch[batch_size] if 0 < batch_size < len(self._dispatch) else None

    def status(self) -> RunnerStatus:
        """Per rung, smallest first: captured (bytes, seconds, padded or exact-size) or eager (reason).

        Indexes and iterates like a tuple of RungStatus; str() is a table.
        """
        rungs = tuple(self._status[r] for r in self.sizes if r in self._status)
        return RunnerStatus(self.name, self.backend.name, rungs, self._compile_report)

    @property
    def pads(self) -> bool:
        """False when the runner replays exact-size calls only (pad='forbid')."""
        return self._pad != "forbid"

    @property
    def pad_policy(self) -> str | float | int | None:
        """How a call's rows are padded up to its rung: "repeat", a fill value, None or "forbid"."""
        return self._pad

    def close(self) -> None:
        """Release every graph; later calls run eager (counted as not_captured_yet)."""
        self._release_graphs()
        self._captured_once = False
        self._rebuild_dispatch()

    def _eager_mode(self) -> contextlib.AbstractContextManager[Any]:
        # no_grad, not inference_mode: an eager result must be an ordinary tensor, like a replay's outputs
        return torch.no_grad() if self._inference_mode else contextlib.nullcontext()

    # ----- calls --------------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run one batch: replay the smallest captured rung that fits, else eager (counted).

        Hot path: every step below was measured; it is kept to one method with locals on purpose.
        """
        try:
            leaves = self._flatten((args, kwargs))
        except _FLATTEN_ERRORS:
            raise GraphInputError(
                f"inputs have structure {describe((args, kwargs))}; the runner was built for "
                f"{self._in_spec.describe()}"
            ) from None
        n = self._validate(leaves)
        rung = self._dispatch[n] if n < self._dispatch_len else None
        if rung is None:
            return self._eager(self._why_eager(n), args, kwargs)
        with self._lock:
            start = time.perf_counter()
            if self._only_batched:
                slot = self._first
                view = slot.views[rung]
                leaf = leaves[slot.index]
                if leaf is not view and leaf.data_ptr() != slot.view_ptrs[rung]:
                    if leaf.requires_grad:  # copy the values only: a static buffer records no history
                        leaf = leaf.detach()
                    (view if n == rung else view.narrow(slot.dim, 0, n)).copy_(leaf)  # type: ignore[arg-type]
                if n != rung:
                    pad_rows(view, slot.dim, n, self._pad)  # type: ignore[arg-type]
            else:
                self._copy_in(leaves, n, rung)
            try:
                self._replays[rung]()
            except Exception as exc:  # a broken replay must not fail the call: run eager, count, say so
                log.warning(
                    "runner %s: replay of rung %d failed (%s); running this call eager", self.name, rung, exc
                )
                return self._eager(CallFallback.REPLAY_ERROR, args, kwargs)
            out = self._out_whole[rung] if n == rung and self._out_whole else self._outputs(n, rung)
            stats = self.stats
            stats.num_replayed += 1
            stats.num_graph_rows += n
            stats.num_padded_rows += rung - n
            seconds = time.perf_counter() - start
            stats.replay_bucket_counts[bisect_left(REPLAY_BUCKETS, seconds)] += 1
            stats.replay_seconds_sum += seconds
        return out

    def static_inputs(self, batch_size: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """(args, kwargs) whose tensors are the static buffers' rows for `batch_size`.

        Write into them in place and call the runner with them: the copy-in is skipped (zero-copy path).
        """
        rung = self.rung_for(batch_size)
        if rung is None:
            raise GraphInputError(
                f"batch_size={batch_size} has no captured rung ({self._why_eager(batch_size)}; captured: "
                f"{sorted(self._graphs)}); call the runner with ordinary tensors instead (it runs eager)"
            )
        leaves: list[Any] = []
        for slot in self._slots:
            if slot.kind is Kind.BATCHED:
                assert slot.dim is not None
                leaves.append(slot.views[rung].narrow(slot.dim, 0, batch_size))
            elif slot.kind is Kind.SHARED:
                leaves.append(slot.buffer)
            else:
                leaves.append(slot.value if slot.kind is Kind.STATIC else slot.value(slot.buffer.item()))  # type: ignore[union-attr]
        args, kwargs = self._in_spec.unflatten(leaves)
        return args, kwargs

    def _validate(self, leaves: tuple[Any, ...]) -> int:
        first = self._first
        leaf = leaves[first.index]
        if not isinstance(leaf, torch.Tensor) or leaf.dim() != first.ndim:
            check_tensor(first, leaf, -1)
        n = leaf.shape[first.dim]
        if n == 0:
            raise GraphInputError(f"{first.path}: batch size is 0; call with at least one row")
        in_ladder = n < len(first.shape_for)
        for slot in self._batched:
            t = leaves[slot.index]
            try:
                ok = (
                    in_ladder
                    and t.dtype is slot.dtype
                    and t.device == slot.device
                    and t.shape == slot.shape_for[n]
                )
            except AttributeError:
                ok = False
            if not ok:
                check_tensor(slot, t, n)  # raises with a precise message (or passes: n above the ladder)
        for slot in self._shared:
            t = leaves[slot.index]
            try:
                ok = t.dtype is slot.dtype and t.device == slot.device and t.shape == slot.shape
            except AttributeError:
                ok = False
            if not ok:
                check_tensor(slot, t, n)
        for slot in self._static_slots:
            check_static(slot, leaves[slot.index])
        for slot in self._scalar_slots:
            check_scalar(slot, leaves[slot.index])
        return int(n)

    def _outputs(self, n: int, rung: int) -> Any:
        leaves = list(self._out_leaves[rung])
        if n != rung:
            for i, dim in self._out_batched:
                leaves[i] = leaves[i].narrow(dim, 0, n)
        if self._clone_outputs:
            leaves = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        return self._out_unflatten(leaves)

    def _why_eager(self, n: int) -> CallFallback:
        return CallFallback.ABOVE_TOP_RUNG if n >= self._dispatch_len else self._eager_reasons[n]

    def _eager(self, reason: CallFallback, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.stats.count_fallback(reason)
        log.debug("runner %s: eager call (%s)", self.name, reason)
        with self._eager_mode():
            return self._fn(*args, **kwargs)

    # ----- introspection ------------------------------------------------------------------------------

    @property
    def fn(self) -> Callable[..., Any]:
        """The wrapped callable (eager path)."""
        return self._fn

    @property
    def slots(self) -> tuple[Slot, ...]:
        """Input slots, in flatten order."""
        return self._slots

    @property
    def in_spec(self) -> TreeSpec:
        """Structure of (args, kwargs)."""
        return self._in_spec


def _resolve_options(options: RunnerOptions | None, keywords: RunnerKeywords) -> RunnerOptions:
    """The options object: the one given, or one built from keyword options; never both."""
    if options is None:
        return RunnerOptions.from_keywords(keywords)
    if keywords:
        raise ConfigError(
            f"GraphRunner got options= and keyword options {sorted(keywords)}; pass one or the other "
            "(dataclasses.replace(options, ...) changes a field of an options object)"
        )
    if not isinstance(options, RunnerOptions):
        raise ConfigError(f"options must be a RunnerOptions, got {type(options).__name__}")
    return options


def _no_outputs(leaves: Any) -> Any:
    raise AssertionError("no rung is captured, so no call replays and no output is rebuilt")
