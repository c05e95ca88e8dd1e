"""How an OrtRunner picks its execution provider, ladder, padding and checks: one frozen options object.

The names follow GraphRunner's options (graphs/options.py) where they mean the same thing (sizes,
max_batch_size, pad, verify, tolerance, clone_outputs, name, registry), so a pipeline stage can be
configured alike whichever runner it uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import CollectorRegistry

from graphrun.errors import ConfigError
from graphrun.graphs.sizes import normalize_ladder

PAD_MODES = ("repeat", "forbid")


class OrtBackend(StrEnum):
    """How an OrtRunner runs its rungs.

    AUTO: CUDA_GRAPH where onnxruntime has the CUDA execution provider and the example inputs are CUDA
    tensors, else EAGER (said once: one INFO line, and the reason in status()).
    CUDA_GRAPH: the CUDA EP with enable_cuda_graph, one graph per rung (sessions.py has ORT's rules).
    BINDING: the same rung path (fixed buffers per rung, IOBinding, padding, the start-up probe) on the
    session's own device with no graph: what CPU tests exercise, as the `sim` backend does for GraphRunner.
    EAGER: every call is one plain Run at its own batch size, counted as an eager call.
    """

    AUTO = "auto"
    CUDA_GRAPH = "cuda_graph"
    BINDING = "binding"
    EAGER = "eager"


@dataclass(frozen=True, slots=True)
class OrtOptions:
    """What an OrtRunner is built with (OrtRunner's docstring explains each)."""

    sizes: Sequence[int] | None = None
    max_batch_size: int | None = None
    backend: OrtBackend | str = OrtBackend.AUTO
    pad: str | float | int | None = "repeat"
    verify: bool = True
    tolerance: tuple[float, float] | None = None
    clone_outputs: bool = False
    device_id: int = 0
    name: str | None = None
    registry: CollectorRegistry | None = None

    def __post_init__(self) -> None:
        try:
            OrtBackend(self.backend)
        except ValueError:
            names = [b.value for b in OrtBackend]
            raise ConfigError(f"backend must be one of {names}, got {self.backend!r}") from None
        if isinstance(self.pad, str) and self.pad not in PAD_MODES:
            raise ConfigError(f"pad must be 'repeat', 'forbid', a number or None, got {self.pad!r}")
        if self.sizes is not None:
            ladder = normalize_ladder(self.sizes)
            if self.max_batch_size is not None and ladder[-1] != self.max_batch_size:
                raise ConfigError(
                    f"max_batch_size={self.max_batch_size} disagrees with the top size {ladder[-1]}"
                )
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.device_id < 0:
            raise ConfigError(f"device_id must be >= 0, got {self.device_id}")
        if self.name is not None and not self.name:
            raise ConfigError("name must be a non-empty string or None (automatic)")

    @property
    def backend_kind(self) -> OrtBackend:
        """The backend as an enum."""
        return OrtBackend(self.backend)

    @property
    def pads(self) -> bool:
        """False when rungs serve exact-size calls only (pad='forbid')."""
        return self.pad != "forbid"
