"""What a bucketed runner pads: its bucketed dims, the mask, the budgets; and the bucket key of a call.

Frozen and validated when built, before anything is allocated; a value that cannot work names itself
and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from graphrun.errors import ConfigError
from graphrun.graphs.options import CaptureWhen, RunnerOptions
from graphrun.graphs.sizes import default_ladder, normalize_ladder

BATCH = "batch"  # the batch dim's name in budgets, metrics and advice


@dataclass(frozen=True, slots=True)
class BucketDim:
    """One dynamic dim besides the batch (a sequence length, an image side).

    axes: input name -> the axis that carries this dim (axis 0 is the batch of every input).
    sizes: its rungs; a call of size s runs on the smallest rung >= s that accepts padding.
    pad_value: what padded positions of every input but the mask hold (a pad token id, 0.0).
    output_axes: output leaf (flatten order: 0 for a lone tensor, a tuple's position, a dict's insertion
    order) -> the axis to slice back to the real size. None: inferred by two eager runs at sizes that
    differ (an axis whose length equals this dim's size in both); declare it when an output axis is a
    function of the size other than equal to it.
    """

    name: str
    axes: Mapping[str, int]
    sizes: Sequence[int]
    pad_value: float = 0
    output_axes: Mapping[int, int] | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name == BATCH:
            raise ConfigError(f"a bucketed dim needs a name other than {BATCH!r}, got {self.name!r}")
        if not self.axes:
            raise ConfigError(
                f"dim {self.name!r}: axes must name at least one input, e.g. {{'input_ids': 1}}"
            )
        bad = {k: a for k, a in self.axes.items() if not isinstance(a, int) or a < 1}
        if bad:
            raise ConfigError(f"dim {self.name!r}: axes must be >= 1 (axis 0 is the batch), got {bad}")
        normalize_ladder(self.sizes)
        if self.output_axes is not None and any(a < 1 for a in self.output_axes.values()):
            raise ConfigError(f"dim {self.name!r}: output_axes must be >= 1, got {dict(self.output_axes)}")

    @property
    def rungs(self) -> tuple[int, ...]:
        """The sizes, sorted and de-duplicated."""
        return normalize_ladder(self.sizes)


@dataclass(frozen=True, slots=True)
class BucketOptions:
    """A BucketedRunner's options.

    dims: the bucketed dims, in the order bucket keys list them.
    mask: the input that marks real positions (1) and padding (0), padded with 0 along every dim it
    carries; a call that omits it gets one built (ones on its real positions). None: no mask input.
    max_graphs: refuse a ladder whose product (batch rungs x each dim's rungs) is larger.
    runner: the options of each bucket's batch-ladder GraphRunner (batch sizes, backend, pad, verify,
    memory_budget_bytes, registry...). memory_budget_bytes bounds the graph pool all buckets share
    (one backend, one pool) and, checked before anything is allocated, the static buffers of all buckets.
    verify: check each bucket padded along each dim against eager at the real size (buckets/verify.py).
    """

    dims: Sequence[BucketDim]
    mask: str | None = None
    max_graphs: int | None = None
    verify: bool = True
    runner: RunnerOptions = field(default_factory=RunnerOptions)
    name: str | None = None

    def __post_init__(self) -> None:
        names = [d.name for d in self.dims]
        if not names:
            raise ConfigError("BucketOptions needs at least one BucketDim (else use GraphRunner)")
        if len(set(names)) != len(names):
            raise ConfigError(f"bucketed dim names must be distinct, got {names}")
        if self.max_graphs is not None and self.max_graphs < 1:
            raise ConfigError(f"max_graphs must be >= 1, got {self.max_graphs}")
        if self.mask is not None and not any(self.mask in d.axes for d in self.dims):
            raise ConfigError(f"mask {self.mask!r} must appear in the axes of a bucketed dim")
        self._check_runner(self.runner)

    @staticmethod
    def _check_runner(runner: RunnerOptions) -> None:
        if runner.name is not None:
            raise ConfigError("name the BucketedRunner (BucketOptions.name), not its per-bucket runners")
        if runner.capture_when is not CaptureWhen.NOW:
            raise ConfigError(
                f"a BucketedRunner captures in its constructor; capture={runner.capture!r} is not supported"
            )
        if runner.batch_dims != 0 or runner.kwarg_batch_dims != "same":
            raise ConfigError(
                "every input of a BucketedRunner is batched along axis 0; leave batch_dims alone"
            )
        if runner.pad == "forbid":
            raise ConfigError("pad='forbid' leaves nothing to bucket; use a GraphRunner with exact sizes")

    def batch_ladder(self, example_batch: int) -> tuple[int, ...]:
        """The batch rungs every bucket captures (the runner options' sizes, else the default ladder)."""
        if self.runner.sizes is not None:
            return normalize_ladder(self.runner.sizes)
        top = self.runner.max_batch_size
        return default_ladder(top if top is not None else example_batch)

    def check_graph_budget(self, batch_ladder: Sequence[int]) -> int:
        """The number of graphs (the product of every dim's rungs); ConfigError naming it if over budget."""
        counts = [(BATCH, len(batch_ladder)), *((d.name, len(d.rungs)) for d in self.dims)]
        total = math.prod(n for _, n in counts)
        if self.max_graphs is not None and total > self.max_graphs:
            product = " x ".join(f"{n} {name} rungs" for name, n in counts)
            raise ConfigError(
                f"{product} = {total} graphs > max_graphs={self.max_graphs}; drop rungs of a dim "
                "(`graphrun ladder` recommends some) or raise max_graphs"
            )
        return total


@dataclass(frozen=True, slots=True)
class Bucket:
    """Where a call goes: the rung of each bucketed dim (in BucketOptions.dims order) and the batch rung.

    `sizes` is the group key a batcher coalesces requests by; `batch` is None when the batch has no
    captured rung (the call then runs eager inside that bucket's runner).
    """

    sizes: tuple[int, ...]
    batch: int | None
