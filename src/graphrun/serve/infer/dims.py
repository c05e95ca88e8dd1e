"""A served model's dynamic dims besides the batch (a sequence length, an image side), served in buckets.

A factory declares them on its ModelSource (source.py): which input axes carry each dim, its rungs, the
value padded positions hold, and optionally which output axes follow it. The served model then runs a
BucketedRunner (graphrun.graphs.buckets) whose buckets are the product of the batch rungs and every
dim's rungs; a request may carry any size from 1 to a dim's top rung, is padded to its bucket with the
others of that bucket, and gets its outputs sliced back to its own sizes. Torch-free: the schema
(HTTP side) holds the same objects, with `outputs` resolved, to check requests and describe the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from graphrun.errors import ConfigError

BATCH_NAME = "batch"  # dim 0 of every tensor; no DynamicDim may take this name


@dataclass(frozen=True, slots=True)
class DynamicDim:
    """One dynamic dim besides the batch, e.g. DynamicDim("length", {"input_ids": 1, "attention_mask": 1},
    rungs=(16, 32, 64, 128)).

    axes: input name -> the axis that carries this dim (>= 1; axis 0 is the batch). Every input named
    must agree on the size in a request.
    rungs: the sizes graphs are captured at. A request may carry any size from 1 to the top rung (400
    above); it runs padded to the smallest rung that holds it and whose padding verified equal to eager.
    pad_value: what padded positions of every input but the mask hold (a pad token id, 0.0); the mask
    (ModelSource.mask) is padded with 0.
    outputs: output name -> the axis sliced back to each request's own size, e.g. {"tokens": 1}. None:
    inferred at start-up by two eager runs at different sizes (an axis whose length equals the dim's
    size follows it; a pooled output follows none). Declare it when an output's axis is a function of
    the size other than equal to it. The schema a server publishes holds it resolved.
    """

    name: str
    axes: Mapping[str, int]
    rungs: Sequence[int]
    pad_value: float = 0
    outputs: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name == BATCH_NAME:
            raise ConfigError(f"a dynamic dim needs a name other than {BATCH_NAME!r}, got {self.name!r}")
        if not self.axes:
            raise ConfigError(f"dim {self.name!r}: axes must name an input, e.g. {{'input_ids': 1}}")
        bad = {name: a for name, a in self.axes.items() if not _is_int(a) or a < 1}
        if bad:
            raise ConfigError(f"dim {self.name!r}: axes must be >= 1 (axis 0 is the batch), got {bad}")
        rungs = list(self.rungs)
        if not rungs or any(not _is_int(r) or r < 1 for r in rungs):
            raise ConfigError(
                f"dim {self.name!r}: rungs must be positive sizes, e.g. (16, 32, 64), got {rungs}"
            )
        if self.outputs is not None and any(not _is_int(a) or a < 1 for a in self.outputs.values()):
            raise ConfigError(f"dim {self.name!r}: outputs' axes must be >= 1, got {dict(self.outputs)}")

    @property
    def ladder(self) -> tuple[int, ...]:
        """The rungs, sorted and de-duplicated."""
        return tuple(sorted(set(self.rungs)))

    @property
    def top(self) -> int:
        """The largest size a request may carry along this dim."""
        return max(self.rungs)

    def size_of(self, shapes: Mapping[str, Sequence[int]]) -> int:
        """This dim's size in a request (the first input carrying it; the schema checked they agree)."""
        name = next(name for name in self.axes if name in shapes)
        return int(shapes[name][self.axes[name]])

    def describe(self) -> dict[str, object]:
        """The /v1/models entry."""
        entry: dict[str, object] = {"name": self.name, "rungs": list(self.ladder), "inputs": dict(self.axes)}
        return {**entry, "outputs": dict(self.outputs or {}), "pad_value": self.pad_value}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
