"""OrtRunner: an ONNX model behind GraphRunner's call API, one CUDA graph per rung on ONNX Runtime.

A call is checked against the model's inputs (io_spec.py), copied into the fixed buffers of the smallest
rung that fits (binding.py), padded, run under the lock, and answered with views of the rung's output
buffers cut to the real batch, exactly as GraphRunner answers. Batches above the top rung, rungs that
failed the start-up probe (probe.py), and runners without graphs run on the eager session (eager.py),
counted by reason; nothing falls back silently. sessions.py lists ORT's rules for CUDA graphs and how
each is kept; placement.py decides the backend.

A graph session that raises while its rungs are probed is dropped whole: its stream and arena may be
left mid-capture, so the eager session is built again from the model bytes and every rung runs eager,
counted once per rung in capture_failed_at_init_total and logged once. A Run that raises on a captured
rung later costs that call only (eager, counted as replay_error).
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from time import perf_counter
from typing import Any

import torch

from graphrun.errors import ConfigError, GraphInputError
from graphrun.graphs.metrics import register_runner
from graphrun.graphs.size_histogram import count_size, new_counts
from graphrun.graphs.sizes import default_ladder, normalize_ladder, rung_for
from graphrun.graphs.status import (
    REPLAY_BUCKETS,
    CallFallback,
    CaptureFailure,
    RungStatus,
    RunnerStats,
    RunnerStatus,
)
from graphrun.ort.binding import RungBinding
from graphrun.ort.eager import EagerRun, first_outputs
from graphrun.ort.io_spec import call_tensors, input_specs, output_specs
from graphrun.ort.options import OrtBackend, OrtOptions
from graphrun.ort.placement import place
from graphrun.ort.probe import ProbeSettings, probe_rung
from graphrun.ort.sessions import eager_session, graph_session, has_cuda_ep, model_bytes

log = logging.getLogger(__name__)


class OrtRunner:
    """Run an ONNX model (a path or its bytes) per rung of a batch-size ladder, as GraphRunner runs a fn.

    example_args / example_kwargs: one tensor per model input (by position in the model's input order,
    or by input name); they fix every dim but the batch dim and the device. Options come as keywords or
    one `options=OrtOptions(...)`: sizes / max_batch_size (the ladder; default 1, 2, 4, 8, then every 8
    up to the example's batch), backend ("auto", "cuda_graph", "binding", "eager": options.py), pad
    ("repeat", a number, None, "forbid"), verify and tolerance (the probe), clone_outputs, device_id,
    name and registry (metrics). Calls take tensors the same way; a model with one output returns a
    tensor, else a tuple in the model's output order. Outputs alias the rung's buffers until its next
    call unless clone_outputs=True.
    """

    def __init__(
        self,
        model: str | Path | bytes,
        example_args: Sequence[torch.Tensor] | torch.Tensor = (),
        example_kwargs: dict[str, torch.Tensor] | None = None,
        *,
        options: OrtOptions | None = None,
        **keywords: Any,
    ) -> None:
        if options is not None and keywords:
            raise ConfigError(f"pass options= or keyword options, not both (got {sorted(keywords)})")
        self.options = options or OrtOptions(**keywords)
        self._model = model_bytes(model)
        args = (example_args,) if isinstance(example_args, torch.Tensor) else tuple(example_args)
        self._load(args, dict(example_kwargs or {}))
        self._register(model)
        self._lock = threading.Lock()  # every Run of the bound rungs (sessions.py, rule 6)
        self._bindings: dict[int, RungBinding] = {}
        self._statuses: dict[int, RungStatus] = {}
        self._build_rungs()

    # ----- construction steps -------------------------------------------------------------------------

    def _load(self, args: tuple[torch.Tensor, ...], kwargs: dict[str, torch.Tensor]) -> None:
        """The placement, the eager session, the input and output specs, and the ladder."""
        devices = {t.device for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)}
        if len(devices) != 1:
            raise ConfigError(
                f"example inputs must be tensors on one device, got devices {sorted(map(str, devices))}"
            )
        self.placement = place(self.options.backend_kind, devices.pop(), has_cuda_ep())
        self._session = eager_session(self._model, self.placement.on_cuda_ep, self.options.device_id)
        names = [arg.name for arg in self._session.get_inputs()]
        example = _ordered(names, args, kwargs)
        self.inputs = input_specs(self._session, example)
        batch = next(t.shape[0] for s, t in zip(self.inputs, example, strict=True) if s.batched)
        self.outputs = output_specs(self._session, first_outputs(self._session, example), batch)
        self._example = example
        self._eager = self._eager_run()
        opts = self.options
        self.sizes = (
            normalize_ladder(opts.sizes) if opts.sizes else default_ladder(opts.max_batch_size or batch)
        )

    def _eager_run(self) -> EagerRun:
        on_host = not self.placement.on_cuda_ep
        return EagerRun(self._session, (self.inputs, self.outputs), self.placement.device, on_host)

    def _register(self, model: str | Path | bytes) -> None:
        mode = "none" if self.placement.backend is OrtBackend.EAGER else "full"
        self.stats = RunnerStats(mode=mode, batch_size_counts=new_counts(self.sizes[-1]))

        def label() -> None: ...

        label.__name__ = Path(model).stem if not isinstance(model, bytes) else "onnx"
        self.name = register_runner(self, label, self.options.name, self.options.registry, self.stats)

    def _build_rungs(self) -> None:
        """Probe every rung (largest first), or mark every rung eager with the placement's reason."""
        placement = self.placement
        if placement.reason is not None:
            self._all_eager(placement.reason, placement.detail)
            log.info("runner %s: no graphs, every call runs eager: %s (%s)",
                     self.name, placement.reason.value, placement.detail)  # fmt: skip
        else:
            self._probe_all()
        self._dispatch = self._dispatch_table()

    def _probe_all(self) -> None:
        """Probe every rung, largest first; a graph session that raises is dropped whole, a plain one
        loses only the rung that raised."""
        graphs = self.placement.backend is OrtBackend.CUDA_GRAPH
        start = perf_counter()
        try:  # building the graph session can fail too (a node the CUDA EP lacks): the same fallback
            session = graph_session(self._model, self.options.device_id) if graphs else self._session
            with self._lock:
                for index, rung in reversed(list(enumerate(self.sizes))):
                    self._probe_one(session, rung, index + 1 if graphs else None)
        except Exception as error:  # only a graph session's failure gets here (module docstring)
            self._drop_graph_session(error)
            return
        self.stats.capture_seconds = perf_counter() - start
        self._log_summary()

    def _probe_one(self, session: Any, rung: int, graph_id: int | None) -> None:
        opts = self.options
        settings = ProbeSettings(opts.verify, opts.pads, opts.pad, opts.tolerance)
        device = self.placement.device
        try:
            binding = RungBinding(session, rung, (self.inputs, self.outputs), device, graph_id)
            status = probe_rung(binding, self._eager, self._example, settings)
        except Exception as error:
            if graph_id is not None:
                raise
            reason, detail = _classified(error)
            status = RungStatus(rung, False, reason=reason, detail=detail)
        self._install(binding if status.captured else None, status)

    def _install(self, binding: RungBinding | None, status: RungStatus) -> None:
        self._statuses[status.size] = status
        if binding is not None:
            self._bindings[status.size] = binding
            self.stats.num_captured += 1
        if status.reason is not None:
            self.stats.capture_failed[status.reason] = self.stats.capture_failed.get(status.reason, 0) + 1
            what = "serves exact-size calls only" if status.captured else "runs eager for the process life"
            log.warning("runner %s: batch size %d %s: %s (%s)",
                        self.name, status.size, what, status.reason.value, status.detail)  # fmt: skip

    def _drop_graph_session(self, error: Exception) -> None:
        reason, detail = _classified(error)
        log.warning("runner %s: the graph session failed at start-up, every call runs eager on a rebuilt "
                    "session: %s (%s)", self.name, reason.value, detail)  # fmt: skip
        self._bindings.clear()
        self._statuses.clear()
        self.stats.num_captured = 0
        self.stats.capture_failed.clear()
        self._session = eager_session(self._model, self.placement.on_cuda_ep, self.options.device_id)
        self._eager = self._eager_run()
        self.placement = replace(self.placement, reason=reason, detail=detail)
        self._all_eager(reason, detail)

    def _all_eager(self, reason: CaptureFailure, detail: str) -> None:
        for size in self.sizes:
            self._statuses[size] = RungStatus(size, False, reason=reason, detail=detail)
        self.stats.capture_failed[reason] = len(self.sizes)

    def _log_summary(self) -> None:
        captured = sorted(self._bindings)
        mib = sum(b.nbytes for b in self._bindings.values()) / 2**20
        log.info("runner %s (%s): %d/%d sizes %s in %.2f s, buffers %.1f MiB", self.name,
                 self.placement.label, len(captured), len(self.sizes), captured,
                 self.stats.capture_seconds, mib)  # fmt: skip

    def _dispatch_table(self) -> list[int | None]:
        """Index n: the rung a batch of n runs on (its own, else the smallest padded one above), or None."""
        padded = sorted(r for r, s in self._statuses.items() if s.captured and s.padded)
        return [None] + [
            n if n in self._bindings else rung_for(padded, n) for n in range(1, self.sizes[-1] + 1)
        ]

    # ----- status -------------------------------------------------------------------------------------

    def status(self) -> RunnerStatus:
        """Per rung, smallest first: captured (bytes, seconds, padded or exact-size) or eager (reason)."""
        rungs = tuple(self._statuses[s] for s in self.sizes if s in self._statuses)
        return RunnerStatus(self.name, self.placement.label, rungs, mode=self.stats.mode)

    @property
    def reason(self) -> str | None:
        """Why this runner makes no graphs ("reason: detail"), or None when it does."""
        p = self.placement
        return None if p.reason is None else f"{p.reason.value}: {p.detail}"

    def rung_for(self, batch_size: int) -> int | None:
        """The bound rung a call of `batch_size` runs on, or None when it would run eager."""
        return self._dispatch[batch_size] if 0 < batch_size < len(self._dispatch) else None

    def rung_binding(self, rung: int) -> RungBinding:
        """The buffers and IOBinding of a bound rung (for inspection; write through static_inputs())."""
        if rung not in self._bindings:
            raise GraphInputError(f"rung {rung} is not bound; bound rungs: {sorted(self._bindings)}")
        return self._bindings[rung]

    @property
    def pads(self) -> bool:
        """False when the runner serves exact-size calls only (pad='forbid')."""
        return self.options.pads

    @property
    def pad_policy(self) -> str | float | int | None:
        """How a call's rows are padded up to its rung: "repeat", a fill value, None or "forbid"."""
        return self.options.pad

    # ----- calls --------------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run one batch: on the smallest bound rung that fits, else eager (counted)."""
        tensors, batch_size = call_tensors(self.inputs, args, kwargs, self.placement.device)
        count_size(self.stats.batch_size_counts, batch_size)
        rung = self.rung_for(batch_size)
        if rung is None:
            return self._eager_call(self._why_eager(batch_size), tensors, batch_size)
        outputs = self._bound_call(self._bindings[rung], tensors, batch_size)
        if outputs is None:
            return self._eager_call(CallFallback.REPLAY_ERROR, tensors, batch_size)
        return _packed(outputs)

    def _bound_call(
        self, binding: RungBinding, tensors: Sequence[torch.Tensor], batch_size: int
    ) -> tuple[torch.Tensor, ...] | None:
        """Copy in, pad, Run and cut the outputs under the lock; None when the Run raised (logged)."""
        with self._lock:
            start = perf_counter()
            try:
                binding.copy_in(tensors, batch_size, self.options.pad)
                binding.run()
            except Exception as error:  # counted by the caller as replay_error; the call runs eager
                log.warning(
                    "runner %s: rung %d failed, this call runs eager: %s", self.name, binding.rung, error
                )
                return None
            outputs = binding.results(batch_size)
            if self.options.clone_outputs:
                outputs = tuple(t.clone() for t in outputs)
            self._count_run(binding.rung, batch_size, perf_counter() - start)
        return outputs

    def _count_run(self, rung: int, batch_size: int, seconds: float) -> None:
        stats = self.stats
        stats.num_replayed += 1
        stats.num_graph_rows += batch_size
        stats.num_padded_rows += rung - batch_size
        stats.replay_bucket_counts[bisect_left(REPLAY_BUCKETS, seconds)] += 1
        stats.replay_seconds_sum += seconds

    def _eager_call(self, reason: CallFallback, tensors: Sequence[torch.Tensor], batch_size: int) -> Any:
        self.stats.count_fallback(reason)
        return _packed(self._eager(tensors, batch_size))

    def _why_eager(self, batch_size: int) -> CallFallback:
        if batch_size > self.sizes[-1]:
            return CallFallback.ABOVE_TOP_RUNG
        if self.placement.reason is CaptureFailure.MODE_NONE:
            return CallFallback.MODE_NONE
        fits = [s for s in self._statuses.values() if s.captured and s.size >= batch_size]
        if not fits:
            return CallFallback.RUNG_NOT_CAPTURED
        if any(s.reason is CaptureFailure.PADDING_MISMATCH for s in fits):
            return CallFallback.PADDING_MISMATCH
        return CallFallback.PADDING_FORBIDDEN

    def static_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The input buffers' rows for `batch_size`, in model input order: write into them in place and
        call the runner with them, and the copy-in is skipped. Not while another thread calls the runner."""
        rung = self.rung_for(batch_size)
        if rung is None:
            raise GraphInputError(
                f"batch_size={batch_size} has no bound rung (bound: {sorted(self._bindings)}); "
                "call the runner with ordinary tensors instead (it runs eager)"
            )
        binding = self._bindings[rung]
        return tuple(
            b[:batch_size] if s.batched else b for s, b in zip(self.inputs, binding.inputs, strict=True)
        )


def _ordered(
    names: Sequence[str], args: Sequence[torch.Tensor], kwargs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """Example tensors in the model's input order (the same rules as a call, without dtype/shape checks)."""
    if len(args) > len(names) or set(kwargs) - set(names):
        raise ConfigError(f"example inputs do not match the model's inputs {list(names)}: "
                          f"{len(args)} positional, names {sorted(kwargs)}")  # fmt: skip
    given = {**dict(zip(names, args, strict=False)), **kwargs}
    missing = [n for n in names if n not in given]
    if missing:
        raise ConfigError(f"no example for model input(s) {missing}; the model's inputs are {list(names)}")
    return tuple(given[n] for n in names)


def _classified(error: Exception) -> tuple[CaptureFailure, str]:
    """A start-up failure's reason (out of memory, or any other error) and a one-line detail."""
    reason = CaptureFailure.OOM if "out of memory" in str(error).lower() else CaptureFailure.ERROR
    return reason, f"{type(error).__name__}: {error}".splitlines()[0][:300]


def _packed(outputs: tuple[torch.Tensor, ...]) -> Any:
    return outputs[0] if len(outputs) == 1 else outputs
