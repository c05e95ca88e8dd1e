"""Capturing one spec's rungs: learn the outputs, then warm up, capture and verify each rung, largest first.

The capture machinery reads a CaptureSpec (spec.py) and returns a CaptureResult; it knows nothing of
who owns the graphs, so a runner and a piecewise segment share it. Largest first so that, on CUDA, every
smaller graph reuses the pool blocks the larger ones freed. Each rung's graph ends by copying the
callable's outputs into one shared set of static outputs (outputs.py), so output memory is O(top rung).

Padded batches are verified once every rung is captured, smallest rung first: which batch sizes a rung
serves padded depends on which smaller rungs captured and accept padding, and that is known only then.
A rung whose padded replay differs from eager keeps its graph for exact-size calls only.

Background capture takes the rungs one at a time instead (begin(), then capture_one() per rung, largest
first): each rung is verified at its own size and padded before it is handed over, over every batch
below it, since no smaller rung is captured yet when it lands.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

from graphrun.graphs.backends import CapturedGraph
from graphrun.graphs.compile import CompiledFn
from graphrun.graphs.failure import classify, root_cause
from graphrun.graphs.outputs import StaticOutputs
from graphrun.graphs.sizes import padded_samples
from graphrun.graphs.spec import CaptureResult, CaptureSpec
from graphrun.graphs.status import CaptureFailure, CompileReport, RungStatus
from graphrun.graphs.verify import VERIFY_SEED, Verifier

__all__ = ["RungCapturer", "classify", "gc_frozen", "root_cause"]

log = logging.getLogger("graphrun.graphs.runner")


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    """Collect once, then keep the collector away from capture (it is slow and may free mid-capture)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Keep the collector away from one rung of a background capture, without collecting or freezing.

    A collection costs tens of milliseconds on a large heap, which the calls running beside the capture
    would wait for; and gc.unfreeze() would thaw what a server froze after start-up (serve/worker.py),
    bringing back the full collections that freezing removed.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class RungCapturer:
    """Captures the rungs of one spec; keeps the static outputs across passes (a re-capture reuses them)."""

    def __init__(self, spec: CaptureSpec) -> None:
        self._spec = spec
        self._outputs: StaticOutputs | None = None  # learned by the first pass, with their verifier
        self._verifier: Verifier | None = None
        self._graphs: dict[int, CapturedGraph] = {}  # the pass in progress
        self._statuses: dict[int, RungStatus] = {}

    def _autograd_mode(self) -> contextlib.AbstractContextManager[object]:
        return torch.inference_mode() if self._spec.options.inference_mode else contextlib.nullcontext()

    def capture_all(self) -> CaptureResult:
        """Capture every rung of the spec's ladder, largest first, logging one line per rung."""
        spec = self._spec
        self._graphs, self._statuses = {}, {}
        with self._autograd_mode(), spec.backend.range(f"graphrun.capture[{spec.name}]"), gc_frozen():
            compiled = self._compile()
            start = time.perf_counter()
            pool_before = spec.backend.pool_bytes()
            if self._outputs is None:
                self._learn_outputs()
            for rung in reversed(spec.sizes):
                if rung not in self._statuses:
                    self._capture_rung(rung)
            if spec.options.verify and spec.options.pads:
                self._verify_padding()
        result = CaptureResult(
            dict(self._graphs),
            dict(self._statuses),
            self._outputs,
            time.perf_counter() - start,
            spec.backend.pool_bytes() - pool_before,
            compiled,
        )
        self._log_summary(result)
        return result

    def begin(self) -> CaptureResult:
        """Start a pass taken one rung at a time: compile, learn the outputs. No graph yet; the statuses
        of rungs that could not even run eagerly."""
        self._graphs, self._statuses = {}, {}
        with self._autograd_mode(), gc_paused():
            compiled = self._compile()
            if self._outputs is None:
                self._learn_outputs()
        return CaptureResult({}, dict(self._statuses), self._outputs, compile=compiled)

    def capture_one(self, rung: int) -> CaptureResult:
        """Capture and verify one rung of the pass begin() started, its padded batches included.

        Verified over every batch below it that no captured smaller rung serves: taken largest first,
        that is all of them, so the rung is checked for every batch it may serve until a smaller lands.
        """
        spec = self._spec
        start, pool_before = time.perf_counter(), spec.backend.pool_bytes()
        with self._autograd_mode(), spec.backend.range(f"graphrun.capture[{spec.name}]"), gc_paused():
            if rung not in self._statuses:
                self._capture_rung(rung)
            if rung in self._graphs and spec.options.verify and spec.options.pads:
                self._verify_padded_rung(rung)
        graphs = {rung: self._graphs[rung]} if rung in self._graphs else {}
        seconds, grown = time.perf_counter() - start, spec.backend.pool_bytes() - pool_before
        return CaptureResult(graphs, {rung: self._statuses[rung]}, self._outputs, seconds, grown)

    def discard(self, rung: int) -> None:
        """Forget a rung whose capture_one() raised part-way, releasing its graph if it had one."""
        graph = self._graphs.pop(rung, None)
        if graph is not None:
            graph.release()
        self._statuses.pop(rung, None)

    def _verify_padded_rung(self, rung: int) -> None:
        """Check one rung's padded replays over the batches no smaller padded rung of this pass serves."""
        below = [r for r in self._graphs if r < rung and self._statuses[r].padded]
        start = time.perf_counter()
        problem = self._padded_problem(self._graphs[rung], rung, max(below, default=0) + 1)
        self._record_padding(rung, problem, time.perf_counter() - start)

    def _compile(self) -> CompileReport | None:
        """The compile phase, when the spec's callable is to be compiled (timed apart from capture)."""
        spec, fn = self._spec, self._spec.fn
        if not isinstance(fn, CompiledFn):
            return None
        return fn.prepare(spec.call_at, [spec.inputs.rung_leaves(r) for r in spec.sizes], spec.sizes)

    def _learn_outputs(self) -> None:
        """Run eager at the largest rung that runs at all, and size static outputs at the top rung."""
        spec = self._spec
        for rung in reversed(spec.sizes):
            try:
                out = spec.call_at(rung)
            except Exception as exc:
                self._fail(rung, classify(exc), exc, 0.0)
                continue
            self._outputs = StaticOutputs(out, rung, spec.sizes[-1], spec.backend)
            self._verifier = Verifier(spec, self._outputs)
            return

    # ----- one rung ----------------------------------------------------------------------------------

    def _body(self, rung: int, outputs: StaticOutputs) -> Callable[[], None]:
        """What the graph records: the callable on the rung's static inputs, outputs copied out."""
        targets = [(i, t) for i, t in enumerate(outputs.rung_outputs(rung)) if isinstance(t, torch.Tensor)]
        flatten, call_at = outputs.spec.flatten, self._spec.call_at

        def body() -> None:
            leaves = flatten(call_at(rung))
            for i, target in targets:
                target.copy_(leaves[i])

        return body

    def _capture_rung(self, rung: int) -> None:
        """Capture and verify one rung at its own size; a failure leaves it eager, with the reason.

        With options.agree (tensor parallel) the ranks join their verdicts after each phase that runs the
        callable (warm-up, capture, verification), so a rung that fails on any rank is eager on all, and no
        rank starts a phase, with its collectives, that a peer skipped.
        """
        if hasattr(self._spec.backend, "current_rung"):
            self._spec.backend.current_rung = rung
        start = time.perf_counter()
        body = self._prepare(rung, start)
        if not self._agreed(body is not None, rung, start):
            return
        assert body is not None
        graph = self._record(rung, body, start)
        if not self._agreed(graph is not None, rung, start):
            if graph is not None:
                graph.release()
            return
        assert graph is not None
        if not self._agreed(self._verified(graph, rung, start), rung, start):
            graph.release()
            return
        seconds = time.perf_counter() - start
        self._graphs[rung] = graph
        self._statuses[rung] = RungStatus(rung, True, graph.nbytes, seconds, padded=self._spec.options.pads)
        mib = graph.nbytes / 2**20
        log.info(
            "runner %s: captured batch size %d in %.3f s (%.1f MiB)", self._spec.name, rung, seconds, mib
        )

    def _prepare(self, rung: int, start: float) -> Callable[[], None] | None:
        """Run the rung eagerly, warm up its body and check the memory budget; None (recorded) on failure."""
        spec, outputs = self._spec, self._outputs
        assert outputs is not None  # a rung without status: outputs were learned
        try:
            outputs.check(spec.call_at(rung), rung)
            body = self._body(rung, outputs)
            spec.backend.warmup(body, spec.options.warmup_iters)
            if spec.options.memory_budget_bytes is not None and self._over_budget(body, rung, start):
                return None
        except Exception as exc:
            self._fail(rung, classify(exc), exc, time.perf_counter() - start)
            return None
        return body

    def _record(self, rung: int, body: Callable[[], None], start: float) -> CapturedGraph | None:
        """The rung's graph, or None (recorded) when the backend could not capture the body."""
        spec = self._spec
        try:
            with spec.backend.range(f"graphrun.capture[{spec.name}:{rung}]"):
                return spec.backend.capture(body, f"graphrun.replay[{spec.name}:{rung}]")
        except Exception as exc:
            self._fail(rung, classify(exc), exc, time.perf_counter() - start)
            return None

    def _verified(self, graph: CapturedGraph, rung: int, start: float) -> bool:
        """Whether the graph replays like eager at the rung's size (True when verification is off)."""
        verifier = self._verifier
        if not self._spec.options.verify:
            return True
        assert verifier is not None
        found = verifier.check(graph, rung, rung, VERIFY_SEED + rung)
        if found is not None:
            self._fail(rung, CaptureFailure.VERIFICATION, found.detail, time.perf_counter() - start)
        return found is None

    def _agreed(self, ok: bool, rung: int, start: float) -> bool:
        """Whether this phase succeeded on every rank (on this one, without options.agree). A rank that
        succeeded while a peer failed marks the rung eager, as peer_rank_failed."""
        agree = self._spec.options.agree
        if agree is None or agree(ok):
            return ok
        if ok:
            detail = "another tensor-parallel rank could not capture this size"
            self._fail(rung, CaptureFailure.PEER_RANK, detail, time.perf_counter() - start)
        return False

    def _over_budget(self, body: Callable[[], None], rung: int, start: float) -> bool:
        backend, budget = self._spec.backend, self._spec.options.memory_budget_bytes
        estimate = backend.estimate_bytes(body)
        projected = backend.projected_pool_bytes(estimate)
        assert budget is not None
        if projected <= budget:
            return False
        detail = f"pool would reach {projected / 2**20:.1f} MiB > budget {budget / 2**20:.1f} MiB"
        self._fail(rung, CaptureFailure.MEMORY_BUDGET, detail, time.perf_counter() - start)
        return True

    # ----- padded sizes ------------------------------------------------------------------------------

    def _verify_padding(self) -> None:
        """Smallest rung first: replay the batches each rung would serve padded, and compare with eager.

        A rung serves padded the batches above the largest smaller rung that accepts padding; it is checked
        at the smallest of them and at one in the middle. A mismatch leaves the rung exact-size only, so
        its batches move on to the next rung, whose interval then reaches down to them.
        """
        if self._verifier is None:  # no rung ran eagerly, so none was captured
            return
        lowest = 1  # the smallest batch that lands on the next rung, padded
        for rung, graph in sorted(self._graphs.items()):
            start = time.perf_counter()
            problem = self._padded_problem(graph, rung, lowest)
            self._record_padding(rung, problem, time.perf_counter() - start)
            if problem is None:
                lowest = rung + 1

    def _padded_problem(self, graph: CapturedGraph, rung: int, lowest: int) -> str | None:
        """The first padded batch from `lowest` up that replays unlike eager on the rung, else None.
        With options.agree every sample is checked even after a problem, so each rank runs the same
        replays (and collectives) whatever its own verdict."""
        verifier, problem = self._verifier, None
        assert verifier is not None  # the rung was captured, so the outputs were learned
        for n in padded_samples(lowest, rung, self._graphs):
            found = verifier.check_padded(graph, rung, n)
            problem = problem or found
            if problem is not None and self._spec.options.agree is None:
                break
        return problem

    def _record_padding(self, rung: int, problem: str | None, seconds: float) -> None:
        """Add the check's time to the rung's; a problem (on any rank, with options.agree) makes the rung
        exact-size only."""
        agree = self._spec.options.agree
        if agree is not None and not agree(problem is None) and problem is None:
            problem = "another tensor-parallel rank's padded replay differs from eager"
        status = self._statuses[rung]
        status = replace(status, capture_seconds=status.capture_seconds + seconds)
        if problem is None:
            self._statuses[rung] = status
            return
        reason = CaptureFailure.PADDING_MISMATCH
        self._statuses[rung] = replace(status, reason=reason, detail=problem, padded=False)
        log.warning(
            "runner %s: batch size %d replays exact-size calls only: %s (%s); smaller batches go to the "
            "next rung that accepts padding, else eager",
            self._spec.name, rung, reason.value, problem,
        )  # fmt: skip

    # ----- bookkeeping -------------------------------------------------------------------------------

    def _fail(self, rung: int, reason: CaptureFailure, exc: BaseException | str, seconds: float) -> None:
        if isinstance(exc, BaseException):
            exc = root_cause(exc)
        text = str(exc).strip()
        detail = text.splitlines()[0][:300] if text else type(exc).__name__
        self._statuses[rung] = RungStatus(rung, False, 0, seconds, reason, detail)
        log.warning(
            "runner %s: batch size %d runs eager for the life of the process: %s (%s)",
            self._spec.name, rung, reason.value, detail,
        )  # fmt: skip

    def _log_summary(self, result: CaptureResult) -> None:
        spec = self._spec
        statuses = [result.statuses[r] for r in spec.sizes if r in result.statuses]
        captured = [s.size for s in statuses if s.captured]
        eager = [f"{s.size} ({s.reason})" for s in statuses if not s.captured]
        exact = [f"{s.size} ({s.reason})" for s in statuses if s.reason is CaptureFailure.PADDING_MISMATCH]
        if not spec.options.pads:
            exact = ["all (pad='forbid')"]
        log.info(
            "runner %s: captured %d/%d graphs %s in %.2f s, pool %.1f MiB%s%s",
            spec.name,
            len(captured),
            len(spec.sizes),
            captured,
            result.seconds,
            result.pool_bytes / 2**20,
            f"; eager: {', '.join(eager)}" if eager else "",
            f"; exact-size only: {', '.join(exact)}" if exact else "",
        )
