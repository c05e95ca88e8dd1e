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
from typing import Any

import torch
from prometheus_client import REGISTRY, CollectorRegistry

from graphrun.errors import ConfigError, GraphInputError
from graphrun.graphs.backends import Backend, CapturedGraph, EagerBackend, make_backend
from graphrun.graphs.buffers import (
    Kind,
    Slot,
    check_scalar,
    check_static,
    check_tensor,
    make_input_slot,
    pad_rows,
)
from graphrun.graphs.capture import RungCapturer
from graphrun.graphs.layout import BatchDims, KwargBatchDims, leaf_batch_dims, leaf_paths
from graphrun.graphs.metrics import collector_for
from graphrun.graphs.pytree import StructureMismatch, TreeSpec, describe, spec_of
from graphrun.graphs.sizes import default_ladder, normalize_ladder, rung_for
from graphrun.graphs.status import (
    REPLAY_BUCKETS,
    CallFallback,
    CaptureFailure,
    RungStatus,
    RunnerStats,
    RunnerStatus,
)

log = logging.getLogger(__name__)

_FLATTEN_ERRORS = (StructureMismatch, KeyError, IndexError, TypeError)
PAD_MODES = ("repeat", "forbid")
SCALAR_MODES = ("static", "tensor")


class GraphRunner:
    """Run `fn` through captured graphs, one per capture size, with eager fallback that is counted.

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
        batch_dims: BatchDims = 0,
        kwarg_batch_dims: KwargBatchDims | str = "same",
        sizes: Sequence[int] | None = None,
        max_batch_size: int | None = None,
        backend: str | Backend = "auto",
        verify: bool = True,
        verify_inputs: Callable[[int, torch.Generator], Sequence[Any]] | None = None,
        tolerance: tuple[float, float] | None = None,
        clone_outputs: bool = False,
        scalars: str = "static",
        pad: str | float | int | None = "repeat",
        memory_budget_bytes: int | None = None,
        warmup_iters: int = 2,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
        capture: bool = True,
        inference_mode: bool = True,
    ) -> None:
        args = (example_args,) if isinstance(example_args, torch.Tensor) else tuple(example_args)
        kwargs = dict(example_kwargs or {})
        _check_options(scalars, pad, memory_budget_bytes, warmup_iters)
        self._fn = fn
        self._clone_outputs = clone_outputs
        self._pad = pad
        self._inference_mode = inference_mode
        self._lock = threading.Lock()
        self._build_input_slots(
            args, kwargs, leaf_batch_dims(batch_dims, kwarg_batch_dims, args, kwargs), scalars
        )
        self.sizes = self._build_ladder(sizes, max_batch_size)
        self.backend = make_backend(backend, self._device(args, kwargs))
        self._register_static_buffers()
        self.stats = RunnerStats()
        self.name = self._register_metrics(name, registry)
        self._capturer = RungCapturer(
            self, verify, tolerance, memory_budget_bytes, warmup_iters, verify_inputs
        )
        self._graphs: dict[int, CapturedGraph] = {}
        self._replays: dict[int, Callable[[], None]] = {}
        self._dispatch: list[int | None] = [None] * (self.sizes[-1] + 1)
        self._dispatch_len = len(self._dispatch)
        self._eager_reasons = [CallFallback.NOT_CAPTURED_YET] * self._dispatch_len
        self._flatten = self._in_spec.flatten
        # rung -> the finished output object when a call fills the whole rung (tuple or single tensor
        # outputs only: a dict or list could be mutated by the caller, so those are rebuilt per call)
        self._out_whole: dict[int, Any] = {}
        self._status: dict[int, RungStatus] = {}
        self._captured_once = False
        if capture:
            self.capture()

    # ----- construction steps -------------------------------------------------------------------------

    def _build_input_slots(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], dims: list[int | None], scalars: str
    ) -> None:
        root = (args, kwargs)
        self._in_spec: TreeSpec = spec_of(root)
        leaves = self._in_spec.flatten(root)
        paths = leaf_paths(args, kwargs)
        batched = [
            (path, leaf.shape[d])
            for leaf, d, path in zip(leaves, dims, paths, strict=True)
            if isinstance(leaf, torch.Tensor) and d is not None
        ]
        if not batched:
            raise ConfigError("no tensor input has a batch dimension: pass batch_dims (e.g. batch_dims=0)")
        batch_sizes = {size for _, size in batched}
        if len(batch_sizes) != 1:
            listing = ", ".join(f"{path}: {size}" for path, size in batched)
            raise ConfigError(
                f"example inputs disagree on the batch size ({listing}); mark inputs without a batch "
                "dimension with batch_dims=(0, None, ...) or kwarg_batch_dims={'name': None}"
            )
        self._example_batch = batch_sizes.pop()
        if self._example_batch < 1:
            raise ConfigError("example inputs must have a batch size of at least 1")
        self._example_leaves = leaves
        self._paths = paths
        self._leaf_dims = dims
        self._scalars = scalars
        self._slots: list[Slot] = []  # filled with buffers once the ladder is known

    def _build_ladder(self, sizes: Sequence[int] | None, max_batch_size: int | None) -> tuple[int, ...]:
        if sizes is not None:
            ladder = normalize_ladder(sizes)
            if max_batch_size is not None and ladder[-1] != max_batch_size:
                raise ConfigError(
                    f"max_batch_size={max_batch_size} disagrees with the top capture size {ladder[-1]}"
                )
        else:
            ladder = default_ladder(max_batch_size if max_batch_size is not None else self._example_batch)
        top = ladder[-1]
        self._slots = [
            make_input_slot(
                i, path, leaf, dim if isinstance(leaf, torch.Tensor) else None, top, self._scalars
            )
            for i, (leaf, dim, path) in enumerate(
                zip(self._example_leaves, self._leaf_dims, self._paths, strict=True)
            )
        ]
        for slot in self._slots:
            if slot.kind is Kind.BATCHED:
                assert slot.buffer is not None and slot.dim is not None
                slot.views = {r: slot.buffer.narrow(slot.dim, 0, r) for r in ladder}
        self._batched = [s for s in self._slots if s.kind is Kind.BATCHED]
        self._shared = [s for s in self._slots if s.kind is Kind.SHARED]
        self._scalar_slots = [s for s in self._slots if s.kind is Kind.SCALAR]
        self._static_slots = [s for s in self._slots if s.kind is Kind.STATIC]
        self._first = self._batched[0]
        self._only_batched = len(self._slots) == 1  # one batched tensor, nothing else: the inlined path
        for slot in self._batched:
            slot.view_ptrs = {r: view.data_ptr() for r, view in slot.views.items()}
        del self._example_leaves
        return ladder

    def _device(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device:
        return self._first.buffer.device if self._first.buffer is not None else torch.device("cpu")

    def _register_static_buffers(self) -> None:
        register = getattr(self.backend, "register_static", None)
        if register is not None:
            register([s.buffer for s in self._slots if s.buffer is not None])

    def _register_metrics(self, name: str | None, registry: CollectorRegistry | None) -> str:
        collector = collector_for(registry if registry is not None else REGISTRY)
        base = name or getattr(self._fn, "__name__", None) or type(self._fn).__name__
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
        for graph in self._graphs.values():
            graph.release()
        self._graphs.clear()
        self._replays.clear()
        self._out_whole.clear()
        self._status.clear()
        if isinstance(self.backend, EagerBackend):  # backend="auto" without CUDA tensors
            self._mark_all_eager(self.backend.why)
        else:
            with self._capture_mode():
                self._capturer.capture_all()
        self._captured_once = True
        self._rebuild_dispatch()
        return self.status()

    def _mark_all_eager(self, why: str) -> None:
        for size in self.sizes:
            self.mark(RungStatus(size, False, reason=CaptureFailure.NO_GRAPH_BACKEND, detail=why))
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
        return RunnerStatus(self.name, self.backend.name, rungs)

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
        for graph in self._graphs.values():
            graph.release()
        self._graphs.clear()
        self._replays.clear()
        self._out_whole.clear()
        self._captured_once = False
        self._rebuild_dispatch()

    def _capture_mode(self) -> contextlib.AbstractContextManager[Any]:
        return torch.inference_mode() if self._inference_mode else contextlib.nullcontext()

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

    def _copy_in(self, leaves: tuple[Any, ...], n: int, rung: int) -> None:
        for slot in self._batched:
            view = slot.views[rung]
            leaf = leaves[slot.index]
            if leaf is not view and leaf.data_ptr() != slot.view_ptrs[rung]:
                if leaf.requires_grad:
                    leaf = leaf.detach()
                if n == rung:
                    view.copy_(leaf)
                else:
                    view.narrow(slot.dim, 0, n).copy_(leaf)  # type: ignore[arg-type]
            if n != rung:
                pad_rows(view, slot.dim, n, self._pad)  # type: ignore[arg-type]
        for slot in self._shared:
            leaf = leaves[slot.index]
            if leaf is not slot.buffer:
                slot.buffer.copy_(leaf.detach() if leaf.requires_grad else leaf)  # type: ignore[union-attr]
        for slot in self._scalar_slots:
            slot.buffer.fill_(leaves[slot.index])  # type: ignore[union-attr]

    def _outputs(self, n: int, rung: int) -> Any:
        capturer = self._capturer
        leaves = list(capturer.out_leaves[rung])
        if n != rung:
            for i, dim in capturer.out_batched:
                leaves[i] = leaves[i].narrow(dim, 0, n)
        if self._clone_outputs:
            leaves = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
        return capturer.out_spec.unflatten(leaves)  # type: ignore[union-attr]  # set before any rung installs

    def _why_eager(self, n: int) -> CallFallback:
        return CallFallback.ABOVE_TOP_RUNG if n >= self._dispatch_len else self._eager_reasons[n]

    def _eager(self, reason: CallFallback, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.stats.count_fallback(reason)
        log.debug("runner %s: eager call (%s)", self.name, reason)
        with self._eager_mode():
            return self._fn(*args, **kwargs)

    # ----- used by RungCapturer ----------------------------------------------------------------------

    def rung_leaves(self, rung: int) -> list[Any]:
        """The leaves `fn` sees when it runs on the static buffers of `rung`."""
        return [
            s.views[rung] if s.kind is Kind.BATCHED else s.buffer if s.buffer is not None else s.value
            for s in self._slots
        ]

    def copy_in(self, leaves: Sequence[Any], n: int, rung: int) -> None:
        """Copy a call's leaves of batch n into the static buffers of `rung`, padded as a call pads them."""
        self._copy_in(tuple(leaves), n, rung)

    def install(self, rung: int, graph: CapturedGraph, status: RungStatus) -> None:
        """Record a rung's outcome; a graph makes the rung replayable."""
        self._status[rung] = status
        if status.captured:
            self._graphs[rung] = graph
            self._replays[rung] = graph.replay
            if self._clone_outputs is False and self._capturer.immutable_outputs:
                self._out_whole[rung] = self._outputs(rung, rung)

    def mark(self, status: RungStatus) -> None:
        """Record a rung's status without touching its graph: an eager rung, or a captured one's update."""
        self._status[status.size] = status

    @property
    def fn(self) -> Callable[..., Any]:
        """The wrapped callable (eager path)."""
        return self._fn

    @property
    def slots(self) -> list[Slot]:
        """Input slots, in flatten order."""
        return self._slots

    @property
    def in_spec(self) -> TreeSpec:
        """Structure of (args, kwargs)."""
        return self._in_spec


def _check_options(scalars: str, pad: Any, budget: int | None, warmup_iters: int) -> None:
    if scalars not in SCALAR_MODES:
        raise ConfigError(f"scalars must be one of {SCALAR_MODES}, got {scalars!r}")
    if isinstance(pad, str) and pad not in PAD_MODES:
        raise ConfigError(f"pad must be 'repeat', 'forbid', a number or None, got {pad!r}")
    if budget is not None and budget <= 0:
        raise ConfigError(f"memory_budget_bytes must be positive, got {budget}")
    if warmup_iters < 1:
        raise ConfigError(
            f"warmup_iters must be >= 1 (cuBLAS and friends initialise lazily), got {warmup_iters}"
        )
