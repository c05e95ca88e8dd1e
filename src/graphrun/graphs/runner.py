"""GraphRunner: capture a callable once per rung of a batch-size ladder, then replay it per call.

A call is validated against the example's structure, copied into the static buffers of the smallest
captured rung that fits, padded, replayed, and answered with views of the static outputs sliced to the
real batch. Anything that cannot replay runs eager and is counted; nothing falls back silently.

Padding assumes the rows of a batch are independent. Capture verifies it per rung (verify.py); a rung
that fails replays exact-size calls only. Which rung serves each batch size is decided then, into one
list, so a call pays one index for dispatch whatever the verification found.

Background capture (capture="background") captures the rungs one by one on a thread (background.py),
largest first, while calls run: each step takes the call lock (capture writes the static buffers replays
read), captures and verifies one rung, installs it and rebuilds the dispatch list, so the next call of
that size replays. A call that finds the lock held by a capture runs eager (counted as `capturing`)
instead of waiting; calls whose rung is not captured yet run eager beside the capture, unlocked.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Unpack

import torch

from graphrun.errors import GraphInputError
from graphrun.graphs.backends import CapturedGraph, make_backend
from graphrun.graphs.background import BackgroundCapture
from graphrun.graphs.buffers import Kind, Slot, check_scalar, check_static, check_tensor, pad_rows
from graphrun.graphs.capture import RungCapturer, classify
from graphrun.graphs.compile import CompiledFn
from graphrun.graphs.failure import DynamicInputError
from graphrun.graphs.inputs import InputLayout
from graphrun.graphs.metrics import register_runner
from graphrun.graphs.mode_plan import ModePlan, plan_mode
from graphrun.graphs.modes import BatchDescriptor, CudaGraphMode, Dispatcher, Route, RouteKind
from graphrun.graphs.options import CaptureWhen, RunnerKeywords, RunnerOptions, resolve_options
from graphrun.graphs.piecewise.backend import PiecewiseBackend
from graphrun.graphs.piecewise.plan import PiecewiseCallable
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

    mode (modes.py, mode_plan.py): "full" (default), "none" (every call eager, counted), "piecewise" (the
    callable cut at uncapturable ops, its segments captured: piecewise/) or "full_and_piecewise" (FULL
    graphs, and a piecewise runner, `.piecewise`, for the batches no FULL rung takes); split_predicate picks
    extra fx nodes to run eager. route(BatchDescriptor) says where a call goes; call_batch runs it there.

    capture: True or "now" (default): capture every rung in the constructor; False or "later": only
    when capture() is called; "background": return at once and capture on a thread, largest rung first,
    each rung switching from eager to replay once captured and verified (wait_captured() waits, status()
    lists the pending rungs). Eager calls then run beside a capture, so `fn` must be safe to call from
    two threads at once; an owner whose callable writes shared state (a KV cache) calls
    start_background_capture(thread=False) and drives capture_step() between its own calls instead.

    Outputs alias static buffers until the next call unless clone_outputs=True. Replays are serialised
    by a lock, since they share the static buffers; eager calls are not.
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
        options = resolve_options(options, keywords)
        args = (example_args,) if isinstance(example_args, torch.Tensor) else tuple(example_args)
        kwargs = dict(example_kwargs or {})
        inputs = InputLayout.build(args, kwargs, options)
        self.options = options
        self.sizes = inputs.sizes
        self.mode = options.graph_mode
        plan = plan_mode(fn, (args, kwargs), inputs, make_backend(options.backend, inputs.device), options)
        self._plan, self.backend = plan, plan.backend
        register = getattr(self.backend, "register_static", None)
        if register is not None:
            register(inputs.static_buffers())
        # the label says what the graphs are: a runner handed a PiecewiseBackend (the engine's, which
        # cuts its model by hand) records piecewise graphs whatever its dispatch mode
        label = CudaGraphMode.PIECEWISE if isinstance(plan.backend, PiecewiseBackend) else self.mode
        self.stats = RunnerStats(mode=label.value)
        self.name = register_runner(self, fn, options.name, options.registry, self.stats)
        captured_fn = plan.fn
        if options.compile:  # graphs record the compiled code; eager fallbacks run `fn` itself
            captured_fn = _compiled(plan, fn, self.name, options)
        self.spec = CaptureSpec(captured_fn, inputs, options, self.backend, self.name)
        self._capturer = RungCapturer(self.spec)
        self._bind_call_path(fn, inputs, options)
        self._piecewise = self._piecewise_runner(fn, args, kwargs)
        self._dispatcher = Dispatcher(
            self.mode,
            self.rung_for if self.mode.full else None,
            self._piecewise.rung_for if self._piecewise is not None else self.rung_for,
        )
        when = options.capture_when
        if when is CaptureWhen.NOW:
            self.capture()
        elif when is CaptureWhen.BACKGROUND:
            self.start_background_capture()

    # ----- construction steps -------------------------------------------------------------------------

    def _piecewise_runner(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> GraphRunner | None:
        """FULL_AND_PIECEWISE: the PIECEWISE runner that takes the batches no FULL rung serves."""
        if self.mode is not CudaGraphMode.FULL_AND_PIECEWISE:
            return None
        name = f"{self.name}-piecewise"
        # the same backend instance: on CUDA, FULL and segment graphs share one pool
        later, piecewise = CaptureWhen.LATER, CudaGraphMode.PIECEWISE
        options = replace(self.options, mode=piecewise, name=name, capture=later, backend=self.backend)
        return GraphRunner(fn, args, kwargs, options=options)

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
        # background capture: rungs still to capture (largest first), whether begin() ran, whether a
        # capture holds the call lock now (calls then run eager instead of waiting), and the thread
        self._pending: list[int] = []
        self._begun = False
        self._capturing = False
        self._step_lock = threading.Lock()  # one capture_step at a time
        self._all_captured = threading.Event()
        self._all_captured.set()
        self._background: BackgroundCapture | None = None
        self._pass_start = 0.0
        self._example_buffers: list[torch.Tensor] = []  # the static inputs as the example left them

    # ----- capture ------------------------------------------------------------------------------------

    def capture(self) -> RunnerStatus:
        """Capture every rung, largest first; rungs that fail run eager, with the reason in status().

        A background capture in progress is stopped first (its rungs are captured again here)."""
        self._stop_background()
        self._release_graphs()
        self._status.clear()
        if self._plan.all_eager is not None:  # mode none, untraceable, or no graph backend
            self._mark_all_eager(*self._plan.all_eager)
        else:
            self._install(self._capturer.capture_all())
        self._captured_once = True
        self._rebuild_dispatch()
        if self._piecewise is not None:
            self._piecewise.capture()
        return self.status()

    # ----- background capture ---------------------------------------------------------------------------

    def start_background_capture(self, thread: bool = True) -> None:
        """Mark every rung pending and capture them largest first, while calls run (eager until then).

        thread=True: a thread does it (wait_captured() waits for it). thread=False: the caller drives it,
        one rung per capture_step(), whenever it suits (an engine between its steps).
        """
        self._stop_background()
        with self._lock:  # no replay is running while its graph goes
            self._release_graphs()
            self._status.clear()
        self._begun, self._captured_once = False, True
        if self._plan.all_eager is not None:
            self._mark_all_eager(*self._plan.all_eager)
            self._pending = []
        else:
            self._pending = sorted(self.sizes, reverse=True)
            self._all_captured.clear()
            with torch.inference_mode():
                self._example_buffers = [t.clone() for t in self.spec.inputs.static_buffers()]
        self.stats.num_pending = len(self._pending)
        self._pass_start = time.perf_counter()
        self._rebuild_dispatch()
        if self._piecewise is not None:
            self._piecewise.start_background_capture(thread=False)
            self._all_captured.clear()
        if self._pending:
            log.info("runner %s: capturing %d sizes in the background; calls run eager until then",
                     self.name, len(self._pending))  # fmt: skip
        if thread and not self._all_captured.is_set():
            self._background = BackgroundCapture(self.capture_step, self.name)

    def capture_step(self) -> bool:
        """Capture the largest pending rung and switch its calls to replay; False when none was pending.

        Holds the call lock for one rung: a replay never shares the static buffers with a capture.
        With FULL_AND_PIECEWISE, the piecewise rungs follow the FULL ones.
        """
        with self._step_lock:
            if not self._pending:
                return self._piecewise_step()
            rung = self._pending[0]
            with self._lock:
                self._capturing = True
                try:
                    self._install(self._capture_pending_rung(rung))
                    self._pending.pop(0)
                    self.stats.num_pending = len(self._pending)
                    self._rebuild_dispatch()
                finally:
                    self._capturing = False
            if not self._pending:
                self._example_buffers = []
                self._log_background_done()
                self._piecewise_step()
            return True

    def _capture_pending_rung(self, rung: int) -> CaptureResult:
        """One rung of the pass (the pass's first step also learns the outputs and compiles). A rung the
        capture machinery could not even attempt (an error it does not classify) is recorded as eager
        rather than left pending forever, and the pass goes on."""
        self._restore_example_inputs()
        try:
            if not self._begun:
                self._install(self._capturer.begin())
                self._begun = True
            return self._capturer.capture_one(rung)
        except Exception as exc:
            self._capturer.discard(rung)
            log.warning("runner %s: background capture of batch size %d failed: %s", self.name, rung, exc)
            status = RungStatus(rung, False, reason=classify(exc), detail=str(exc).strip()[:300])
            return CaptureResult({}, {rung: status}, None)

    def _restore_example_inputs(self) -> None:
        """Put the example back into the static inputs before a rung is captured on them.

        Calls replayed since the pass began left their own rows there, and warm-up and capture run the
        callable on those: a callable with side effects (a KV-cache write at a slot the input names)
        would redo a live call's effects with other values. The example is what capture="now" sees.
        """
        with torch.inference_mode():
            for buffer, example in zip(self.spec.inputs.static_buffers(), self._example_buffers, strict=True):
                buffer.copy_(example)

    def _piecewise_step(self) -> bool:
        """One piecewise rung of a FULL_AND_PIECEWISE background pass; marks the pass done at the end."""
        if self._piecewise is not None and self._piecewise.capture_step():
            return True
        self._all_captured.set()
        return False

    def _log_background_done(self) -> None:
        captured = [r.size for r in self._status.values() if r.captured]
        log.info(
            "runner %s: background capture done: %d/%d sizes captured %s in %.2f s",
            self.name, len(captured), len(self.sizes), sorted(captured),
            time.perf_counter() - self._pass_start,
        )  # fmt: skip

    def wait_captured(self, timeout: float | None = None) -> bool:
        """Wait until a background capture has reached every rung; False if `timeout` seconds passed first.

        True at once when no background capture is pending (capture="now", or it is done)."""
        return self._all_captured.wait(timeout)

    @property
    def pending_rungs(self) -> tuple[int, ...]:
        """Rungs a background capture has still to capture, in the order it takes them."""
        return tuple(self._pending)

    def _stop_background(self) -> None:
        if self._background is not None:
            self._background.stop()
            self._background = None
        self._pending = []
        self.stats.num_pending = 0
        self._all_captured.set()

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

    def _mark_all_eager(self, reason: CaptureFailure, why: str) -> None:
        for size in self.sizes:
            self._status[size] = RungStatus(size, False, reason=reason, detail=why)
        self.stats.capture_failed[reason] = len(self.sizes)
        log.info("runner %s: no graphs, every call runs eager: %s (%s)", self.name, reason.value, why)

    def _rebuild_dispatch(self) -> None:
        """Per batch size: its own rung if captured, else the smallest captured rung that accepts padding."""
        captured = sorted(self._graphs)
        padded = [r for r in captured if self._status[r].padded]
        for n in range(1, self.sizes[-1] + 1):
            self._dispatch[n] = n if n in self._graphs else rung_for(padded, n)
            self._eager_reasons[n] = self._eager_reason(n, captured)

    def _eager_reason(self, n: int, captured: list[int]) -> CallFallback:
        """Why batch n has no rung: none captured that fits, or those that fit replay exact sizes only."""
        if any(r >= n for r in self._pending):
            return CallFallback.CAPTURING
        if not self._captured_once:
            return CallFallback.NOT_CAPTURED_YET
        if self._plan.all_eager is not None and self._plan.all_eager[0] in _ALL_EAGER_CALLS:
            return _ALL_EAGER_CALLS[self._plan.all_eager[0]]
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
        failed: dict[str, str] = getattr(self.backend, "eager_segments", {})
        splits = (
            *self._plan.splits,
            *(f"{label} (segment failed to capture: {why})" for label, why in failed.items()),
        )
        return RunnerStatus(
            self.name,
            self.backend.name,
            rungs,
            self._compile_report,
            self.stats.mode,
            splits,
            tuple(self._pending),
        )

    @property
    def piecewise(self) -> GraphRunner | None:
        """FULL_AND_PIECEWISE: the PIECEWISE runner serving batches without a FULL rung (else None)."""
        return self._piecewise

    def route(self, batch: BatchDescriptor) -> Route:
        """Where a call described by `batch` goes: a FULL rung, a PIECEWISE rung, or eager."""
        return self._dispatcher.dispatch(batch)

    def call_batch(self, batch: BatchDescriptor, *args: Any, **kwargs: Any) -> Any:
        """Run one call the way route(batch) says (a non-uniform batch never takes a FULL graph)."""
        route = self.route(batch)
        if route.kind is RouteKind.EAGER:
            return self._eager(self._why_eager(batch.num_tokens), args, kwargs)
        if route.kind is RouteKind.PIECEWISE and self._piecewise is not None:
            return self._piecewise(*args, **kwargs)
        return self(*args, **kwargs)

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
        self._stop_background()
        if self._piecewise is not None:
            self._piecewise.close()
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
            if self._piecewise is not None and self._piecewise.rung_for(n) is not None:
                return self._piecewise(*args, **kwargs)
            return self._eager(self._why_eager(n), args, kwargs)
        if self._capturing:  # a background capture holds the static buffers: run eager, do not wait
            return self._eager(CallFallback.CAPTURING, args, kwargs)
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
            except DynamicInputError as exc:  # piecewise: a split's output no longer fits its segment
                log.debug("runner %s: rung %d cannot replay this call: %s", self.name, rung, exc)
                return self._eager(CallFallback.DYNAMIC_SHAPE, args, kwargs)
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
        Not from another thread while a background capture runs: the capture uses the same buffers (an
        owner driving capture_step() itself, between its calls, is safe).
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


_ALL_EAGER_CALLS = {
    CaptureFailure.MODE_NONE: CallFallback.MODE_NONE,
    CaptureFailure.UNTRACEABLE: CallFallback.UNTRACEABLE,
}


def _compiled(plan: ModePlan, fn: Callable[..., Any], name: str, options: RunnerOptions) -> CompiledFn:
    """What a compile=True runner captures: the callable compiled whole (FULL), or the piecewise split
    with each segment compiled and the eager splits as they are (PIECEWISE); keyed by the user's `fn`."""
    compile_with = None
    split = plan.fn
    if isinstance(split, PiecewiseCallable):

        def compile_with(_: Callable[..., Any]) -> Callable[..., Any]:
            return split.compiled()

    return CompiledFn(
        plan.fn,
        name,
        options.compile_cache_dir,
        options.tolerance,
        compile_with=compile_with,
        identity=fn,
        key_extra=";".join(plan.splits),
    )


def _no_outputs(leaves: Any) -> Any:
    raise AssertionError("no rung is captured, so no call replays and no output is rebuilt")
