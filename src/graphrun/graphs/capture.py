"""Capturing a runner's rungs: learn the outputs, then warm up, capture and verify each rung, largest first.

Largest first so that, on CUDA, every smaller graph reuses the pool blocks the larger ones freed. Each
rung's graph ends by copying the callable's outputs into one shared set of static outputs, so the
per-rung outputs are scratch too and output memory is O(top rung).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from graphrun.errors import HostSyncError, UncapturableOpError
from graphrun.graphs.backends import CapturedGraph
from graphrun.graphs.buffers import Kind
from graphrun.graphs.pytree import StructureMismatch, TreeSpec, spec_of
from graphrun.graphs.status import CaptureFailure, RungStatus
from graphrun.graphs.verify import mismatch, random_like

if TYPE_CHECKING:
    from graphrun.graphs.runner import GraphRunner

log = logging.getLogger("graphrun.graphs.runner")

_HOST_SYNC_MARKERS = ("operation not permitted when stream is capturing", "cudaErrorStreamCaptureImplicit")
_CAPTURE_MARKERS = ("capture", "cudaErrorStreamCapture")
VERIFY_SEED = 0x6A7


class OutputShapeError(RuntimeError):
    """The callable's outputs at one rung do not fit the static outputs learned at another."""


def classify(exc: BaseException) -> CaptureFailure:
    """Map a capture-time exception onto the fixed set of reasons.

    On CUDA the first error (say, from .item()) is often wrapped: capture_end then fails with "operation
    failed due to a previous error during capture", so the whole exception chain is read.
    """
    chain = _exception_chain(exc)
    if any(isinstance(e, torch.OutOfMemoryError) for e in chain):
        return CaptureFailure.OOM
    if any(isinstance(e, OutputShapeError) for e in chain):
        return CaptureFailure.OUTPUT_SHAPE
    texts = [str(e) for e in chain]
    if any(isinstance(e, HostSyncError) for e in chain) or any(
        m in t for t in texts for m in _HOST_SYNC_MARKERS
    ):
        return CaptureFailure.HOST_SYNC
    if any(isinstance(e, UncapturableOpError) for e in chain) or any(
        m in t for t in texts for m in _CAPTURE_MARKERS
    ):
        return CaptureFailure.UNCAPTURABLE_OP
    return CaptureFailure.ERROR


def root_cause(exc: BaseException) -> BaseException:
    """The first error of a chain: the one that says what the model did wrong."""
    return _exception_chain(exc)[-1]


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    """Collect once, then keep the collector away from capture (it is slow and may free mid-capture)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class RungCapturer:
    """Does the capture work for one runner and holds what replay needs of the outputs."""

    def __init__(
        self,
        runner: GraphRunner,
        verify: bool,
        tolerance: tuple[float, float] | None,
        memory_budget_bytes: int | None,
        warmup_iters: int,
        verify_inputs: Callable[[int, torch.Generator], Sequence[Any]] | None = None,
    ) -> None:
        self._runner = runner
        self._verify_inputs = verify_inputs
        self._verify = verify
        self._tolerance = tolerance
        self._budget = memory_budget_bytes
        self._warmup_iters = warmup_iters
        self.out_spec: TreeSpec | None = None
        self.out_slots: list[tuple[int, Kind, int | None, Any]] = []  # (leaf index, kind, dim, buffer/value)
        self.out_leaves: dict[int, list[Any]] = {}  # rung -> output leaves replay returns at full rung
        self.out_batched: list[tuple[int, int]] = []  # (leaf index, batch dim) to narrow for n < rung

    def capture_all(self) -> None:
        """Capture every rung of the runner's ladder, largest first, logging one line per rung."""
        runner = self._runner
        start = time.perf_counter()
        pool_before = runner.backend.pool_bytes()
        with runner.backend.range(f"graphrun.capture[{runner.name}]"), gc_frozen():
            if self.out_spec is None:
                self._learn_outputs()
            for rung in reversed(runner.sizes):
                if rung not in {s.size for s in runner.status()}:
                    self._capture_rung(rung)
        seconds = time.perf_counter() - start
        self._log_summary(seconds, runner.backend.pool_bytes() - pool_before)

    # ----- outputs ------------------------------------------------------------------------------------

    def _learn_outputs(self) -> None:
        """Run eager at the largest rung that runs at all, and size static outputs at the top rung."""
        runner = self._runner
        for rung in reversed(runner.sizes):
            try:
                out = self._call(rung)
            except Exception as exc:
                self._fail(rung, classify(exc), exc, 0.0)
                continue
            self._allocate_outputs(out, rung, runner.sizes[-1])
            return

    @property
    def immutable_outputs(self) -> bool:
        """True when the output is one leaf or a tuple of leaves: safe to hand out the same object twice."""
        root = self.out_spec.root if self.out_spec is not None else None
        return root is not None and (
            root.kind == "leaf" or (root.kind == "tuple" and all(c.kind == "leaf" for c in root.children))
        )

    def _allocate_outputs(self, out: Any, rung: int, top: int) -> None:
        self.out_spec = spec_of(out)
        leaves = self.out_spec.flatten(out)
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, torch.Tensor):
                batched = leaf.dim() > 0 and leaf.shape[0] == rung
                shape = (top, *leaf.shape[1:]) if batched else tuple(leaf.shape)
                buf = torch.empty(shape, dtype=leaf.dtype, device=leaf.device)
                self.out_slots.append(
                    (i, Kind.BATCHED if batched else Kind.SHARED, 0 if batched else None, buf)
                )
                if batched:
                    self.out_batched.append((i, 0))
            else:
                self.out_slots.append((i, Kind.STATIC, None, leaf))
        register = getattr(self._runner.backend, "register_static", None)
        if register is not None:
            register([b for _, kind, _, b in self.out_slots if kind is not Kind.STATIC])

    def _rung_outputs(self, rung: int) -> list[Any]:
        assert self.out_spec is not None
        leaves: list[Any] = [None] * self.out_spec.num_leaves
        for i, kind, dim, buf in self.out_slots:
            leaves[i] = buf.narrow(dim, 0, rung) if kind is Kind.BATCHED else buf
        return leaves

    def _check_outputs(self, out: Any, rung: int) -> list[Any]:
        """Flatten one run's outputs and check they fit the static outputs; raise OutputShapeError if not."""
        assert self.out_spec is not None
        try:
            leaves = self.out_spec.flatten(out)
        except (StructureMismatch, KeyError, IndexError, TypeError):
            raise OutputShapeError(
                f"outputs at batch {rung} have another structure than at the top rung"
            ) from None
        for i, kind, dim, buf in self.out_slots:
            leaf = leaves[i]
            if kind is Kind.STATIC:
                if isinstance(leaf, torch.Tensor) or leaf != buf:
                    raise OutputShapeError(
                        f"non-tensor output {i} changed between rungs: {buf!r} vs {leaf!r}"
                    )
                continue
            want = buf.narrow(dim, 0, rung).shape if kind is Kind.BATCHED else buf.shape
            if not isinstance(leaf, torch.Tensor) or leaf.shape != want or leaf.dtype != buf.dtype:
                got = tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
                raise OutputShapeError(f"output {i} at batch {rung} is {got}, expected {tuple(want)}")
        return list(leaves)

    # ----- one rung ----------------------------------------------------------------------------------

    def _call(self, rung: int) -> Any:
        runner = self._runner
        args, kwargs = runner.in_spec.unflatten(runner.rung_leaves(rung))
        return runner.fn(*args, **kwargs)

    def _body(self, rung: int) -> Callable[[], None]:
        """What the graph records: the callable on the rung's static inputs, outputs copied out."""
        targets = [(i, t) for i, t in enumerate(self._rung_outputs(rung)) if isinstance(t, torch.Tensor)]
        flatten = self.out_spec.flatten  # type: ignore[union-attr]

        def body() -> None:
            leaves = flatten(self._call(rung))
            for i, target in targets:
                target.copy_(leaves[i])

        return body

    def _capture_rung(self, rung: int) -> None:
        runner, backend = self._runner, self._runner.backend
        if hasattr(backend, "current_rung"):
            backend.current_rung = rung
        start = time.perf_counter()
        try:
            self._check_outputs(self._call(rung), rung)
            body = self._body(rung)
            backend.warmup(body, self._warmup_iters)
            if self._budget is not None and self._over_budget(body, rung, start):
                return
            with backend.range(f"graphrun.capture[{runner.name}:{rung}]"):
                graph = backend.capture(body, f"graphrun.replay[{runner.name}:{rung}]")
        except Exception as exc:
            self._fail(rung, classify(exc), exc, time.perf_counter() - start)
            return
        problem = self._verify_rung(rung, graph) if self._verify else None
        seconds = time.perf_counter() - start
        if problem is not None:
            graph.release()
            self._fail(rung, CaptureFailure.VERIFICATION, problem, seconds)
            return
        self.out_leaves[rung] = self._rung_outputs(rung)
        runner.install(rung, graph, RungStatus(rung, True, graph.nbytes, seconds))
        runner.stats.num_captured += 1
        runner.stats.capture_seconds += seconds
        log.info(
            "runner %s: captured batch size %d in %.3f s (%.1f MiB)",
            runner.name,
            rung,
            seconds,
            graph.nbytes / 2**20,
        )

    def _over_budget(self, body: Callable[[], None], rung: int, start: float) -> bool:
        backend = self._runner.backend
        estimate = backend.estimate_bytes(body)
        projected = backend.projected_pool_bytes(estimate)
        assert self._budget is not None
        if projected <= self._budget:
            return False
        detail = f"pool would reach {projected / 2**20:.1f} MiB > budget {self._budget / 2**20:.1f} MiB"
        self._fail(rung, CaptureFailure.MEMORY_BUDGET, detail, time.perf_counter() - start)
        return True

    def _verify_rung(self, rung: int, graph: CapturedGraph) -> str | None:
        """Replay on fresh random inputs and compare with eager; a description of the first mismatch."""
        runner = self._runner
        gen = torch.Generator().manual_seed(VERIFY_SEED + rung)
        if self._verify_inputs is not None:
            args, kwargs = tuple(self._verify_inputs(rung, gen)), dict[str, Any]()
            try:
                leaves = list(runner.in_spec.flatten((args, kwargs)))
            except (StructureMismatch, KeyError, IndexError, TypeError):
                return "verify_inputs returned another structure than the example inputs"
        else:
            leaves = [self._random_leaf(slot, rung, gen) for slot in runner.slots]
            args, kwargs = runner.in_spec.unflatten(leaves)
        try:
            want = self._check_outputs(runner.fn(*args, **kwargs), rung)
            runner.copy_in(leaves, rung)
            graph.replay()
            runner.backend.synchronize()
        except Exception as exc:
            return f"verification run failed: {exc}"
        for i, got in enumerate(self._rung_outputs(rung)):
            if isinstance(got, torch.Tensor):
                problem = mismatch(got, want[i], self._tolerance)
                if problem is not None:
                    return f"output {i}: {problem}"
        return None

    @staticmethod
    def _random_leaf(slot: Any, rung: int, gen: torch.Generator) -> Any:
        if slot.kind is Kind.BATCHED:
            shape = list(slot.buffer.shape)
            shape[slot.dim] = rung
            return random_like(slot.buffer, shape, gen)
        if slot.kind is Kind.SHARED:
            return random_like(slot.buffer, slot.buffer.shape, gen)
        if slot.kind is Kind.SCALAR:
            return slot.value(slot.buffer.item())
        return slot.value

    # ----- bookkeeping -------------------------------------------------------------------------------

    def _fail(self, rung: int, reason: CaptureFailure, exc: BaseException | str, seconds: float) -> None:
        runner = self._runner
        if isinstance(exc, BaseException):
            exc = root_cause(exc)
        text = str(exc).strip()
        detail = text.splitlines()[0][:300] if text else type(exc).__name__
        runner.mark(RungStatus(rung, False, 0, seconds, reason, detail))
        runner.stats.capture_failed[reason] = runner.stats.capture_failed.get(reason, 0) + 1
        log.warning(
            "runner %s: batch size %d runs eager for the life of the process: %s (%s)",
            runner.name,
            rung,
            reason.value,
            detail,
        )

    def _log_summary(self, seconds: float, pool_bytes: int) -> None:
        runner = self._runner
        statuses = runner.status()
        captured = [s.size for s in statuses if s.captured]
        eager = [f"{s.size} ({s.reason})" for s in statuses if not s.captured]
        log.info(
            "runner %s: captured %d/%d graphs %s in %.2f s, pool %.1f MiB%s",
            runner.name,
            len(captured),
            len(runner.sizes),
            captured,
            seconds,
            pool_bytes / 2**20,
            f"; eager: {', '.join(eager)}" if eager else "",
        )
