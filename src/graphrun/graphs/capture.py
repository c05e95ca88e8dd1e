"""Capturing a runner's rungs: learn the outputs, then warm up, capture and verify each rung, largest first.

Largest first so that, on CUDA, every smaller graph reuses the pool blocks the larger ones freed. Each
rung's graph ends by copying the callable's outputs into one shared set of static outputs, so the
per-rung outputs are scratch too and output memory is O(top rung).

Padded batches are verified once every rung is captured, smallest rung first: which batch sizes a rung
serves padded depends on which smaller rungs captured and accept padding, and that is known only then.
A rung whose padded replay differs from eager keeps its graph for exact-size calls only.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from graphrun.graphs.backends import CapturedGraph
from graphrun.graphs.buffers import Kind
from graphrun.graphs.failure import OutputShapeError, classify, root_cause
from graphrun.graphs.pytree import StructureMismatch, TreeSpec, spec_of
from graphrun.graphs.sizes import padded_samples
from graphrun.graphs.status import CaptureFailure, RungStatus
from graphrun.graphs.verify import VERIFY_SEED, Verifier

if TYPE_CHECKING:
    from graphrun.graphs.runner import GraphRunner

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
        self._verify = verify
        self._verifier = Verifier(runner, self, tolerance, verify_inputs)
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
        graphs: dict[int, CapturedGraph] = {}
        with runner.backend.range(f"graphrun.capture[{runner.name}]"), gc_frozen():
            if self.out_spec is None:
                self._learn_outputs()
            for rung in reversed(runner.sizes):
                if rung not in {s.size for s in runner.status()}:
                    graph = self._capture_rung(rung)
                    if graph is not None:
                        graphs[rung] = graph
            if self._verify and runner.pads:
                self._verify_padding(graphs)
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
                # plain tensors even under inference mode: callers may use outputs in autograd later
                with torch.inference_mode(False):
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

    def rung_outputs(self, rung: int) -> list[Any]:
        """The static output leaves a replay of `rung` writes (batched ones narrowed to the rung)."""
        assert self.out_spec is not None
        leaves: list[Any] = [None] * self.out_spec.num_leaves
        for i, kind, dim, buf in self.out_slots:
            leaves[i] = buf.narrow(dim, 0, rung) if kind is Kind.BATCHED else buf
        return leaves

    def sliced_outputs(self, rung: int, n: int) -> list[Any]:
        """The static output leaves of `rung` as a call of n rows sees them (batched ones sliced to n)."""
        leaves = self.rung_outputs(rung)
        for i, dim in self.out_batched:
            leaves[i] = leaves[i].narrow(dim, 0, n)
        return leaves

    def check_outputs(self, out: Any, rung: int) -> list[Any]:
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
        targets = [(i, t) for i, t in enumerate(self.rung_outputs(rung)) if isinstance(t, torch.Tensor)]
        flatten = self.out_spec.flatten  # type: ignore[union-attr]

        def body() -> None:
            leaves = flatten(self._call(rung))
            for i, target in targets:
                target.copy_(leaves[i])

        return body

    def _capture_rung(self, rung: int) -> CapturedGraph | None:
        """Capture and verify one rung at its own size; its graph, or None when it runs eager."""
        runner, backend = self._runner, self._runner.backend
        if hasattr(backend, "current_rung"):
            backend.current_rung = rung
        start = time.perf_counter()
        try:
            self.check_outputs(self._call(rung), rung)
            body = self._body(rung)
            backend.warmup(body, self._warmup_iters)
            if self._budget is not None and self._over_budget(body, rung, start):
                return None
            with backend.range(f"graphrun.capture[{runner.name}:{rung}]"):
                graph = backend.capture(body, f"graphrun.replay[{runner.name}:{rung}]")
        except Exception as exc:
            self._fail(rung, classify(exc), exc, time.perf_counter() - start)
            return None
        found = self._verifier.check(graph, rung, rung, VERIFY_SEED + rung) if self._verify else None
        seconds = time.perf_counter() - start
        if found is not None:
            graph.release()
            self._fail(rung, CaptureFailure.VERIFICATION, found.detail, seconds)
            return None
        self.out_leaves[rung] = self.rung_outputs(rung)
        runner.install(rung, graph, RungStatus(rung, True, graph.nbytes, seconds, padded=runner.pads))
        runner.stats.num_captured += 1
        runner.stats.capture_seconds += seconds
        log.info(
            "runner %s: captured batch size %d in %.3f s (%.1f MiB)",
            runner.name,
            rung,
            seconds,
            graph.nbytes / 2**20,
        )
        return graph

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

    # ----- padded sizes ------------------------------------------------------------------------------

    def _verify_padding(self, graphs: dict[int, CapturedGraph]) -> None:
        """Smallest rung first: replay the batches each rung would serve padded, and compare with eager.

        A rung serves padded the batches above the largest smaller rung that accepts padding; it is checked
        at the smallest of them and at one in the middle. A mismatch leaves the rung exact-size only, so
        its batches move on to the next rung, whose interval then reaches down to them.
        """
        lowest = 1  # the smallest batch that lands on the next rung, padded
        for rung, graph in sorted(graphs.items()):
            start = time.perf_counter()
            problem = None
            for n in padded_samples(lowest, rung, graphs):
                problem = self._verifier.check_padded(graph, rung, n)
                if problem is not None:
                    break
            self._record_padding(rung, problem, time.perf_counter() - start)
            if problem is None:
                lowest = rung + 1

    def _record_padding(self, rung: int, problem: str | None, seconds: float) -> None:
        """Add the check's time to the rung's; a problem makes the rung exact-size only, counted once."""
        runner = self._runner
        status = next(s for s in runner.status() if s.size == rung)
        status = replace(status, capture_seconds=status.capture_seconds + seconds)
        runner.stats.capture_seconds += seconds
        if problem is None:
            runner.mark(status)
            return
        reason = CaptureFailure.PADDING_MISMATCH
        runner.mark(replace(status, reason=reason, detail=problem, padded=False))
        runner.stats.capture_failed[reason] = runner.stats.capture_failed.get(reason, 0) + 1
        log.warning(
            "runner %s: batch size %d replays exact-size calls only: %s (%s); smaller batches go to the "
            "next rung that accepts padding, else eager",
            runner.name, rung, reason.value, problem,
        )  # fmt: skip

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
        exact = [f"{s.size} ({s.reason})" for s in statuses if s.reason is CaptureFailure.PADDING_MISMATCH]
        if not runner.pads:
            exact = ["all (pad='forbid')"]
        log.info(
            "runner %s: captured %d/%d graphs %s in %.2f s, pool %.1f MiB%s%s",
            runner.name,
            len(captured),
            len(runner.sizes),
            captured,
            seconds,
            pool_bytes / 2**20,
            f"; eager: {', '.join(eager)}" if eager else "",
            f"; exact-size only: {', '.join(exact)}" if exact else "",
        )
