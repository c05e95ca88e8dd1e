"""Why a rung or a call ran eager, and what each rung holds: the fixed vocabulary of fallbacks.

Reasons are a closed enum so metric labels stay bounded. A runner's status is one small typed object
that iterates like the tuple of rungs it holds and prints as a table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import overload


class CaptureFailure(StrEnum):
    """Why a rung was not captured at start-up (it then runs eager for the life of the process).

    One reason is not a failure to capture: padding_mismatch marks a rung that replays exact-size calls only.
    """

    NO_GRAPH_BACKEND = "no_graph_backend"  # backend "auto" without CUDA tensors: nothing is captured
    OOM = "oom"
    UNCAPTURABLE_OP = "uncapturable_op"
    HOST_SYNC = "host_sync"
    VERIFICATION = "verification_mismatch"
    MEMORY_BUDGET = "memory_budget"
    OUTPUT_SHAPE = "output_shape"
    ERROR = "error"
    # the rung is captured, but a padded (smaller) batch replayed on it differs from eager: the callable
    # couples rows (a batch mean, batch-norm in training, softmax over the batch), so it replays
    # exact-size calls only
    PADDING_MISMATCH = "padding_mismatch"
    MODE_NONE = "mode_none"  # mode="none": graphs are off, every call runs eager
    UNTRACEABLE = "untraceable"  # piecewise: neither torch.fx nor torch.export could trace the callable
    SEGMENT_NOT_CAPTURED = "segment_not_captured"  # piecewise: a segment failed to capture (cause in detail)
    # tensor parallel (RunnerOptions.agree): this rank captured the rung, another rank could not, so it runs
    # eager on every rank (a rank replaying while another runs eager would pair their collectives wrongly)
    PEER_RANK = "peer_rank_failed"


class CallFallback(StrEnum):
    """Why one call ran eager."""

    ABOVE_TOP_RUNG = "above_top_rung"
    RUNG_NOT_CAPTURED = "rung_not_captured"
    REPLAY_ERROR = "replay_error"
    NOT_CAPTURED_YET = "not_captured_yet"
    # background capture: the batch's rung is still pending, or being captured while this call came
    CAPTURING = "capturing"
    PADDING_MISMATCH = "padding_mismatch"  # the captured rungs that fit replay exact-size calls only
    PADDING_FORBIDDEN = "padding_forbidden"  # pad="forbid": a batch that is not a rung size runs eager
    MODE_NONE = "mode_none"
    UNTRACEABLE = "untraceable"
    DYNAMIC_SHAPE = (
        "dynamic_shape"  # piecewise: an eager split's output changed shape (or value) since capture
    )
    # the caller needs an output the graph does not compute (the LLM engine: a prompt whose request wants
    # logprobs, which the prefill graph does not produce); counted by the caller
    NEEDS_OTHER_OUTPUT = "needs_other_output"


class CompileOutcome(StrEnum):
    """What compiling a runner's callable came to."""

    COMPILED = "compiled"
    FAILED = "failed"  # dynamo or inductor raised: the callable runs uncompiled
    MISMATCH = "mismatch"  # compiled output differs from the callable's: it runs uncompiled


class CacheUse(StrEnum):
    """Whether the compile read stored artifacts."""

    OFF = "off"  # no cache folder given
    HIT = "hit"  # artifacts of this key were loaded before compiling
    MISS = "miss"  # none stored: compiled from scratch, then saved


class CompileBackend(StrEnum):
    """What compiled the callable."""

    AOT_INDUCTOR = "aot_inductor"  # torch.export + AOTInductor, a .pt2 package loaded without dynamo
    TORCH_COMPILE = "torch_compile"  # dynamo + inductor: where export cannot take the callable


@dataclass(frozen=True, slots=True)
class CompileReport:
    """One compile phase: outcome, seconds (everything the phase took, a refused AOTInductor attempt
    included), cache use, the reason when it ended uncompiled, the backend that compiled (or tried
    last), and why AOTInductor was not used when it was not (`aot_refused`)."""

    outcome: CompileOutcome
    seconds: float
    cache: CacheUse = CacheUse.OFF
    detail: str = ""
    backend: CompileBackend = CompileBackend.TORCH_COMPILE
    aot_refused: str = ""

    def __str__(self) -> str:
        text = f"compile: {self.outcome} in {self.seconds:.2f} s by {self.backend}, cache {self.cache}"
        text = f"{text} ({self.detail})" if self.detail else text
        return f"{text}; aot_inductor refused: {self.aot_refused}" if self.aot_refused else text


@dataclass(frozen=True, slots=True)
class RungStatus:
    """One rung after capture: captured (graph bytes, seconds) or eager with the reason and detail.

    padded: the rung also replays smaller batches, padded up to it. False for a rung that was not
    captured, and for one that replays exact-size calls only (pad="forbid", or reason padding_mismatch).
    """

    size: int
    captured: bool
    nbytes: int = 0
    capture_seconds: float = 0.0
    reason: CaptureFailure | None = None
    detail: str = ""
    padded: bool = False

    def __str__(self) -> str:
        if not self.captured:
            return f"rung {self.size}: eager ({self.reason}: {self.detail})"
        text = f"rung {self.size}: captured, {self.nbytes / 2**20:.1f} MiB, {self.capture_seconds:.3f} s"
        if self.padded:
            return text
        why = f"{self.reason}: {self.detail}" if self.reason is not None else "pad='forbid'"
        return f"{text}, exact-size calls only ({why})"


@dataclass(frozen=True, slots=True)
class RunnerStatus(Sequence[RungStatus]):
    """Every rung of one runner, smallest first; indexes and iterates like a tuple of RungStatus.

    str() is a table: one line per rung with what replays on it and why a rung runs eager.
    """

    runner: str
    backend: str
    rungs: tuple[RungStatus, ...] = ()
    compile: CompileReport | None = None  # the compile phase, when the runner compiles (compile=True)
    mode: str = "full"
    splits: tuple[str, ...] = ()  # piecewise: the split points, "node (reason: detail)"
    pending: tuple[int, ...] = ()  # background capture: rungs not captured yet, in capture order

    @property
    def num_pending(self) -> int:
        """Rungs a background capture has still to reach (0 once it is done, or without one)."""
        return len(self.pending)

    @overload
    def __getitem__(self, index: int) -> RungStatus: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[RungStatus, ...]: ...

    def __getitem__(self, index: int | slice) -> RungStatus | tuple[RungStatus, ...]:
        return self.rungs[index]

    def __len__(self) -> int:
        return len(self.rungs)

    def __str__(self) -> str:
        where = self.backend if self.mode == "full" else f"{self.backend}, {self.mode}"
        if not self.rungs and not self.pending:
            return f"runner {self.runner} ({where}): not captured yet"
        captured = sum(r.captured for r in self.rungs)
        total = len(self.rungs) + len(self.pending)
        head = f"runner {self.runner} ({where}): {captured} of {total} sizes captured"
        if self.pending:
            head += f"; capturing in the background, pending {list(self.pending)}"
        if self.compile is not None:
            head += f"; {self.compile}"
        if self.splits:
            head += "\nsplit at: " + ", ".join(self.splits)
        rows = [_rung_row(r) for r in self.rungs]
        headers = ("size", "graph", "padded calls", "MiB", "capture s", "note")
        return head + "\n" + text_table(headers, rows, align="rllrrl")


def _rung_row(r: RungStatus) -> tuple[str, ...]:
    if not r.captured:
        return (str(r.size), "eager", "-", "-", f"{r.capture_seconds:.3f}", f"{r.reason}: {r.detail}")
    note = "" if r.padded or r.reason is None else f"{r.reason}: {r.detail}"
    padded = "yes" if r.padded else "no (forbid)" if r.reason is None else "no"
    return (str(r.size), "captured", padded, f"{r.nbytes / 2**20:.1f}", f"{r.capture_seconds:.3f}", note)


def text_table(headers: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    """A plain-text table: columns padded to their widest cell, two spaces apart, no trailing blanks.

    align: one letter per column, "l" or "r" (numbers read best right-aligned); missing letters are "l".
    """
    lines = [tuple(headers), *(tuple(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    sides = align.ljust(len(headers), "l")

    def cell(text: str, i: int) -> str:
        return text.rjust(widths[i]) if sides[i] == "r" else text.ljust(widths[i])

    return "\n".join("  ".join(cell(t, i) for i, t in enumerate(line)).rstrip() for line in lines)


# Replay host-time buckets (seconds): replay is tens of microseconds, eager fallbacks milliseconds.
REPLAY_BUCKETS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 2e-2, 1e-1)


@dataclass(slots=True)
class RunnerStats:
    """Plain counters updated on the hot path; the Prometheus collector reads them at scrape time.

    Plain ints cost ~50 ns to bump; prometheus_client children take a lock per update.
    """

    num_captured: int = 0
    num_replayed: int = 0
    num_graph_rows: int = 0
    num_padded_rows: int = 0
    capture_seconds: float = 0.0
    compile_seconds: float = 0.0
    compile_cache_hit: bool = False
    capture_failed: dict[CaptureFailure, int] = field(default_factory=dict)
    eager_fallback: dict[CallFallback, int] = field(default_factory=dict)
    replay_bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(REPLAY_BUCKETS) + 1))
    replay_seconds_sum: float = 0.0
    mode: str = "full"  # the runner's graph mode, a label of its metrics
    num_pending: int = 0  # rungs a background capture has still to reach
    # calls per batch size, index = size, last slot = above the top rung (size_histogram.py); set by the
    # runner once it knows its ladder
    batch_size_counts: list[int] = field(default_factory=list)

    def count_fallback(self, reason: CallFallback) -> None:
        """Count one call that ran eager."""
        self.eager_fallback[reason] = self.eager_fallback.get(reason, 0) + 1

    @property
    def padding_ratio(self) -> float:
        """Padded rows over all rows graphs computed since start."""
        total = self.num_graph_rows + self.num_padded_rows
        return self.num_padded_rows / total if total else 0.0
