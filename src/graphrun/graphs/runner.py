"""GraphRunner: capture a callable once per rung of a batch-size ladder, then replay it per call.

A call is validated against the example's structure, copied into the static buffers of the smallest
captured rung that fits, padded, replayed, and answered with views of the static outputs sliced to the
real batch. Anything that cannot replay runs eager and is counted; nothing falls back silently.

The runner composes the pieces, one concept per file: the input layout and its copy-in (inputs.py), the
capture machinery (capture.py, reading one immutable CaptureSpec: spec.py), the installed rungs and which
batch size each serves (rung_table.py), the calls (call_path.py, executing one CallPlan per batch size:
call_plan.py), and background capture (background.py). The runner itself is construction, capture
passes, status and dispatch between modes. Padding assumes the rows of a batch are independent; capture
verifies it per rung (verify.py) and a rung that fails replays exact-size calls only.

Background capture (capture="background") captures the rungs one by one, largest first, while calls
run: each step takes the call lock (capture writes the static buffers replays read), captures and
verifies one rung, installs it and rebuilds the table, so the next call of that size replays. A call
that finds the lock held by a capture runs eager (counted as `capturing`) instead of waiting; calls
whose rung is not captured yet run eager beside the capture, unlocked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Unpack

import torch

from graphrun.errors import GraphInputError
from graphrun.graphs.backends import make_backend
from graphrun.graphs.background import BackgroundCapture, BackgroundPass
from graphrun.graphs.buffers import Slot
from graphrun.graphs.call_path import CallPath
from graphrun.graphs.capture import RungCapturer
from graphrun.graphs.inputs import InputLayout
from graphrun.graphs.metrics import register_runner
from graphrun.graphs.mode_plan import plan_mode
from graphrun.graphs.modes import BatchDescriptor, CudaGraphMode, Dispatcher, Route, RouteKind
from graphrun.graphs.options import CaptureWhen, RunnerKeywords, RunnerOptions, resolve_options
from graphrun.graphs.piecewise.backend import PiecewiseBackend
from graphrun.graphs.pytree import TreeSpec
from graphrun.graphs.rung_table import RungTable
from graphrun.graphs.size_histogram import new_counts
from graphrun.graphs.spec import CaptureSpec
from graphrun.graphs.status import RunnerStats, RunnerStatus

log = logging.getLogger(__name__)


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
        self.stats = RunnerStats(mode=label.value, batch_size_counts=new_counts(inputs.sizes[-1]))
        self.name = register_runner(self, fn, options.name, options.registry, self.stats)
        self.spec = CaptureSpec(
            plan.capture_fn(fn, self.name, options), inputs, options, self.backend, self.name
        )
        self._capturer = RungCapturer(self.spec)
        self._rungs = RungTable(inputs.sizes, plan.all_eager)
        self._bind_call_path(fn, inputs, options)
        self._piecewise = self._piecewise_runner(fn, args, kwargs)
        self._calls.piecewise = self._piecewise
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
        """The call path (call_path.py) and the state capture shares with it."""
        self._fn = fn
        self._inputs = inputs
        self._calls = CallPath(
            fn,
            inputs,
            self._rungs,
            self.stats,
            self.name,
            clone_outputs=options.clone_outputs,
            inference_mode=options.inference_mode,
        )
        self._lock = self._calls.lock  # replays and capture steps take it in turn
        self._step_lock = threading.Lock()  # one capture_step at a time
        self._all_captured = threading.Event()
        self._all_captured.set()
        self._background: BackgroundCapture | None = None
        self._pass: BackgroundPass | None = None

    # ----- capture ------------------------------------------------------------------------------------

    def capture(self) -> RunnerStatus:
        """Capture every rung, largest first; rungs that fail run eager, with the reason in status().

        A background capture in progress is stopped first (its rungs are captured again here)."""
        self._stop_background()
        self._rungs.reset()
        self._refresh()
        if self._rungs.all_eager is not None:  # mode none, untraceable, or no graph backend
            self._rungs.mark_all_eager(self.stats, self.name)
        else:
            self._rungs.install(self._capturer.capture_all(), self.stats)
        self._rungs.captured_once = True
        self._refresh()
        if self._piecewise is not None:
            self._piecewise.capture()
        return self.status()

    def _refresh(self) -> None:
        """After the rungs changed: rebuild the table, and drop the call plans (made again on first use)."""
        self._rungs.rebuild(self.pending_rungs)
        self._calls.drop_plans()

    # ----- background capture ---------------------------------------------------------------------------

    def start_background_capture(self, thread: bool = True) -> None:
        """Mark every rung pending and capture them largest first, while calls run (eager until then).

        thread=True: a thread does it (wait_captured() waits for it). thread=False: the caller drives it,
        one rung per capture_step(), whenever it suits (an engine between its steps).
        """
        self._stop_background()
        with self._lock:  # no replay is running while its graph goes
            self._rungs.reset()
            self._refresh()
        self._rungs.captured_once = True
        if self._rungs.all_eager is not None:
            self._rungs.mark_all_eager(self.stats, self.name)
        else:
            self._pass = BackgroundPass(self._capturer, self._inputs, self.name)
            self._all_captured.clear()
        self.stats.num_pending = len(self.pending_rungs)
        self._refresh()
        if self._piecewise is not None:
            self._piecewise.start_background_capture(thread=False)
            self._all_captured.clear()
        if self._pass is not None:
            log.info("runner %s: capturing %d sizes in the background; calls run eager until then",
                     self.name, len(self._pass.pending))  # fmt: skip
        if thread and not self._all_captured.is_set():
            self._background = BackgroundCapture(self.capture_step, self.name)

    def capture_step(self) -> bool:
        """Capture the largest pending rung and switch its calls to replay; False when none was pending.

        Holds the call lock for one rung: a replay never shares the static buffers with a capture.
        With FULL_AND_PIECEWISE, the piecewise rungs follow the FULL ones.
        """
        with self._step_lock:
            step = self._pass
            if step is None or not step.pending:
                return self._piecewise_step()
            with self._lock:
                self._calls.capturing = True
                try:
                    for result in step.capture_next():
                        self._rungs.install(result, self.stats)
                    self.stats.num_pending = len(step.pending)
                    self._refresh()
                finally:
                    self._calls.capturing = False
            if not step.pending:
                step.log_done(self._rungs.statuses.values())
                self._piecewise_step()
            return True

    def _piecewise_step(self) -> bool:
        """One piecewise rung of a FULL_AND_PIECEWISE background pass; marks the pass done at the end."""
        if self._piecewise is not None and self._piecewise.capture_step():
            return True
        self._all_captured.set()
        return False

    def wait_captured(self, timeout: float | None = None) -> bool:
        """Wait until a background capture has reached every rung; False if `timeout` seconds passed first.

        True at once when no background capture is pending (capture="now", or it is done)."""
        return self._all_captured.wait(timeout)

    @property
    def pending_rungs(self) -> tuple[int, ...]:
        """Rungs a background capture has still to capture, in the order it takes them."""
        return tuple(self._pass.pending) if self._pass is not None else ()

    def _stop_background(self) -> None:
        if self._background is not None:
            self._background.stop()
            self._background = None
        self._pass = None
        self.stats.num_pending = 0
        self._all_captured.set()

    # ----- status and dispatch ----------------------------------------------------------------------------

    def rung_for(self, batch_size: int) -> int | None:
        """The captured rung a call of `batch_size` replays, or None when it would run eager."""
        return self._rungs.rung_for(batch_size)

    def status(self) -> RunnerStatus:
        """Per rung, smallest first: captured (bytes, seconds, padded or exact-size) or eager (reason).

        Indexes and iterates like a tuple of RungStatus; str() is a table.
        """
        failed: dict[str, str] = getattr(self.backend, "eager_segments", {})
        splits = (
            *self._plan.splits,
            *(f"{label} (segment failed to capture: {why})" for label, why in failed.items()),
        )
        rungs = self._rungs
        mode = self.stats.mode
        return RunnerStatus(
            self.name,
            self.backend.name,
            rungs.rung_statuses(),
            rungs.compile_report,
            mode,
            splits,
            self.pending_rungs,
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
            return self._calls.eager(self._rungs.why_eager(batch.num_tokens), args, kwargs)
        if route.kind is RouteKind.PIECEWISE and self._piecewise is not None:
            return self._piecewise(*args, **kwargs)
        return self(*args, **kwargs)

    @property
    def pads(self) -> bool:
        """False when the runner replays exact-size calls only (pad='forbid')."""
        return self.options.pads

    @property
    def pad_policy(self) -> str | float | int | None:
        """How a call's rows are padded up to its rung: "repeat", a fill value, None or "forbid"."""
        return self.options.pad

    def close(self) -> None:
        """Release every graph; later calls run eager (counted as not_captured_yet)."""
        self._stop_background()
        if self._piecewise is not None:
            self._piecewise.close()
        self._rungs.release()
        self._rungs.captured_once = False
        self._refresh()

    # ----- calls --------------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run one batch: replay the smallest captured rung that fits, else eager (counted)."""
        return self._calls(args, kwargs)

    def static_inputs(self, batch_size: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """(args, kwargs) whose tensors are the static buffers' rows for `batch_size`.

        Write into them in place and call the runner with them: the copy-in is skipped (zero-copy path).
        Not from another thread while a background capture runs: the capture uses the same buffers (an
        owner driving capture_step() itself, between its calls, is safe).
        """
        rung = self.rung_for(batch_size)
        if rung is None:
            raise GraphInputError(
                f"batch_size={batch_size} has no captured rung ({self._rungs.why_eager(batch_size)}; "
                f"captured: {sorted(self._rungs.graphs)}); call the runner with ordinary tensors instead "
                "(it runs eager)"
            )
        args, kwargs = self._inputs.in_spec.unflatten(self._inputs.call_leaves(rung, batch_size))
        return args, kwargs

    # ----- introspection ------------------------------------------------------------------------------

    @property
    def fn(self) -> Callable[..., Any]:
        """The wrapped callable (eager path)."""
        return self._fn

    @property
    def slots(self) -> tuple[Slot, ...]:
        """Input slots, in flatten order."""
        return self._inputs.slots

    @property
    def in_spec(self) -> TreeSpec:
        """Structure of (args, kwargs)."""
        return self._inputs.in_spec
