"""GraphRunner's options: one frozen, validated object instead of a long list of constructor parameters.

`GraphRunner(fn, args, options=RunnerOptions(...))` and `GraphRunner(fn, args, sizes=..., pad=...)` are
the same runner: keyword arguments build a RunnerOptions (RunnerKeywords types them for callers). A
value that cannot work is refused here, when the options are built, naming the value and the fix, so a
runner (or a future piecewise segment handed the same options) never starts half-configured. Change one
with `dataclasses.replace`, which validates again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, TypedDict

import torch
from prometheus_client import CollectorRegistry

from graphrun.errors import ConfigError
from graphrun.graphs.backends import BACKEND_NAMES, Backend
from graphrun.graphs.layout import BatchDims, KwargBatchDims
from graphrun.graphs.modes import CudaGraphMode
from graphrun.graphs.sizes import normalize_ladder

PAD_MODES = ("repeat", "forbid")
SCALAR_MODES = ("static", "tensor")

VerifyInputs = Callable[[int, torch.Generator], Sequence[Any]]
SplitPredicate = Callable[[Any], bool]  # a torch.fx Node -> run it eager between piecewise segments
# this rank's verdict -> True only if every rank's verdict was True (tensor parallel: a MIN all-reduce)
Agree = Callable[[bool], bool]


class CaptureWhen(StrEnum):
    """When a runner captures its rungs.

    NOW (capture=True): in the constructor, every rung before it returns. LATER (capture=False): not until
    capture() is called; calls run eager meanwhile. BACKGROUND: the constructor returns at once and a
    thread captures the rungs largest first; calls run eager (counted as `capturing`) until their rung
    is captured and verified, then replay. wait_captured() waits for the thread.
    """

    NOW = "now"
    LATER = "later"
    BACKGROUND = "background"

    @classmethod
    def parse(cls, value: CaptureWhen | str | bool) -> CaptureWhen:
        """True -> NOW, False -> LATER, or a member's value ("now", "later", "background")."""
        if isinstance(value, bool):
            return cls.NOW if value else cls.LATER
        try:
            return cls(value)
        except ValueError:
            names = [m.value for m in cls]
            raise ConfigError(f"capture must be True, False or one of {names}, got {value!r}") from None


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """How a GraphRunner batches, captures, verifies, pads and reports (see GraphRunner for each)."""

    batch_dims: BatchDims = 0
    kwarg_batch_dims: KwargBatchDims | str = "same"
    sizes: Sequence[int] | None = None
    max_batch_size: int | None = None
    backend: str | Backend = "auto"
    verify: bool = True
    verify_inputs: VerifyInputs | None = None
    tolerance: tuple[float, float] | None = None
    clone_outputs: bool = False
    scalars: str = "static"
    pad: str | float | int | None = "repeat"
    memory_budget_bytes: int | None = None
    warmup_iters: int = 2
    name: str | None = None
    registry: CollectorRegistry | None = None
    capture: CaptureWhen | str | bool = CaptureWhen.NOW
    inference_mode: bool = True
    compile: bool = False
    compile_cache_dir: str | None = None
    mode: CudaGraphMode | str = CudaGraphMode.FULL
    split_predicate: SplitPredicate | None = None
    agree: Agree | None = None

    def __post_init__(self) -> None:
        self._check_modes()
        self._check_ladder()
        self._check_numbers()

    def _check_modes(self) -> None:
        CudaGraphMode.parse(self.mode)
        CaptureWhen.parse(self.capture)
        if self.scalars not in SCALAR_MODES:
            raise ConfigError(f"scalars must be one of {SCALAR_MODES}, got {self.scalars!r}")
        if isinstance(self.pad, str) and self.pad not in PAD_MODES:
            raise ConfigError(f"pad must be 'repeat', 'forbid', a number or None, got {self.pad!r}")
        if isinstance(self.kwarg_batch_dims, str) and self.kwarg_batch_dims != "same":
            raise ConfigError(
                f"kwarg_batch_dims must be an int, None, a dict or 'same', got {self.kwarg_batch_dims!r}"
            )
        if isinstance(self.backend, str) and self.backend not in BACKEND_NAMES:
            raise ConfigError(
                f"backend must be one of {BACKEND_NAMES} or a Backend instance, got {self.backend!r}"
            )
        if self.compile_cache_dir is not None and not self.compile:
            raise ConfigError(
                f"compile_cache_dir={self.compile_cache_dir!r} is used only with compile=True; "
                "pass compile=True or drop the cache folder"
            )
        if self.agree is not None and CaptureWhen.parse(self.capture) is CaptureWhen.BACKGROUND:
            raise ConfigError(
                "agree (tensor-parallel ranks) needs the ranks' collectives in one order, which a capture "
                "thread beside the calls breaks; pass capture='later' and call "
                "start_background_capture(thread=False), then capture_step() at the same step on every rank"
            )
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ConfigError(f"name must be a non-empty string or None (automatic), got {self.name!r}")

    def _check_ladder(self) -> None:
        top = self.max_batch_size
        if top is not None and top < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {top!r}")
        if self.sizes is None:
            return
        if iter(self.sizes) is self.sizes:  # an iterator would be used up by this check
            raise ConfigError(
                f"sizes must be a list or tuple of batch sizes, got {type(self.sizes).__name__}"
            )
        ladder = normalize_ladder(self.sizes)
        if top is not None and ladder[-1] != top:
            raise ConfigError(f"max_batch_size={top} disagrees with the top capture size {ladder[-1]}")

    def _check_numbers(self) -> None:
        budget = self.memory_budget_bytes
        if budget is not None and budget <= 0:
            raise ConfigError(f"memory_budget_bytes must be positive, got {budget}")
        if self.warmup_iters < 1:
            raise ConfigError(
                f"warmup_iters must be >= 1 (cuBLAS and friends initialise lazily), got {self.warmup_iters}"
            )
        tol = self.tolerance
        if tol is not None and (len(tol) != 2 or any(not isinstance(t, int | float) or t < 0 for t in tol)):
            raise ConfigError(
                f"tolerance must be (rtol, atol), two non-negative numbers, or None (per dtype), got {tol!r}"
            )

    @property
    def graph_mode(self) -> CudaGraphMode:
        """The mode as an enum ("full", "piecewise", ... in any spelling CudaGraphMode.parse reads)."""
        return CudaGraphMode.parse(self.mode)

    @property
    def capture_when(self) -> CaptureWhen:
        """The capture option as an enum (True is NOW, False is LATER)."""
        return CaptureWhen.parse(self.capture)

    @property
    def pads(self) -> bool:
        """False when calls replay exact-size only (pad='forbid')."""
        return self.pad != "forbid"

    @classmethod
    def from_keywords(cls, keywords: Mapping[str, Any]) -> RunnerOptions:
        """Build options from GraphRunner's keyword arguments; an unknown keyword names the valid ones."""
        unknown = sorted(set(keywords) - OPTION_NAMES)
        if unknown:
            raise TypeError(
                f"GraphRunner got unknown option(s) {unknown}; the options are {sorted(OPTION_NAMES)}"
            )
        return cls(**keywords)


OPTION_NAMES = frozenset(f.name for f in fields(RunnerOptions))


class RunnerKeywords(TypedDict, total=False):
    """GraphRunner's keyword options, typed for callers (one key per RunnerOptions field)."""

    batch_dims: BatchDims
    kwarg_batch_dims: KwargBatchDims | str
    sizes: Sequence[int] | None
    max_batch_size: int | None
    backend: str | Backend
    verify: bool
    verify_inputs: VerifyInputs | None
    tolerance: tuple[float, float] | None
    clone_outputs: bool
    scalars: str
    pad: str | float | int | None
    memory_budget_bytes: int | None
    warmup_iters: int
    name: str | None
    registry: CollectorRegistry | None
    capture: CaptureWhen | str | bool
    inference_mode: bool
    compile: bool
    compile_cache_dir: str | None
    mode: CudaGraphMode | str
    split_predicate: SplitPredicate | None
    agree: Agree | None


def resolve_options(options: RunnerOptions | None, keywords: Mapping[str, Any]) -> RunnerOptions:
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
