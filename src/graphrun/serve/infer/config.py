"""Settings of a served tensor model: where it comes from, its rungs, batching and request limits.

One frozen dataclass, built from `graphrun serve --module/--exported/--onnx` flags (infer/cli.py); the HTTP
settings (port, queue, keys, body limit) stay in ServeConfig. Torch-free (the CLI checks it before torch
loads): the ladder itself is computed by graphs/sizes.py when the model is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graphrun.errors import ConfigError

GRAPH_BACKENDS = ("auto", "sim", "cuda")
DEFAULT_MAX_BATCH_SIZE = 32


@dataclass(frozen=True, slots=True)
class InferConfig:
    """What `graphrun serve --module pkg.mod:factory`, `--exported model.pt2` or `--onnx model.onnx`
    serves, and how.

    max_wait_ms: how long the first request of a batch waits for others (0: no wait; a batch still
    takes every request queued at that moment). max_batch_requests: the most requests one model call
    coalesces (None: as many as fit the top rung; 1: no coalescing, one request per call). max_rows: the
    rows one request may carry (400 above);
    a request above the top rung runs alone, split into top-rung chunks. device: where an exported
    program runs ("auto": CUDA when there is one); a factory's example inputs say where its model runs.
    dim_rungs: an exported program's dynamic axes besides the batch -> their rungs, as
    ((input, axis, rungs), ...) (exported.py; a factory declares its own dims); mask_input: the exported
    program's input that marks real positions. onnx: an ONNX model run by OrtRunner (onnx_calls.py);
    graph_backend "sim" does not apply to it.
    """

    module: str | None = None
    exported: Path | None = None
    device: str = "auto"
    graph_backend: str = "auto"
    enforce_eager: bool = False
    cuda_graph_sizes: tuple[int, ...] = ()
    cuda_graph_max_bs: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_ms: float = 2.0
    max_batch_requests: int | None = None
    max_rows: int = 1024
    verify: bool = True
    dim_rungs: tuple[tuple[str, int, tuple[int, ...]], ...] = ()
    mask_input: str | None = None
    onnx: Path | None = None

    def __post_init__(self) -> None:
        if sum(source is not None for source in (self.module, self.exported, self.onnx)) != 1:
            raise ConfigError(
                "serve a tensor model with exactly one of --module pkg.mod:factory, --exported or --onnx"
            )
        if self.onnx is not None and self.graph_backend == "sim":
            raise ConfigError(
                "--graph-backend sim is GraphRunner's CPU simulator; an --onnx model takes auto or cuda"
            )
        if self.graph_backend not in GRAPH_BACKENDS:
            raise ConfigError(f"graph_backend must be one of {GRAPH_BACKENDS}, got {self.graph_backend!r}")
        if not self.max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0 (0: no wait), got {self.max_wait_ms}")
        if self.max_batch_requests is not None and self.max_batch_requests < 1:
            raise ConfigError(
                "max_batch_requests must be >= 1 (1: one request per model call), "
                f"got {self.max_batch_requests}"
            )
        if self.max_rows < 1:
            raise ConfigError(f"max_rows must be >= 1, got {self.max_rows}")
        if self.cuda_graph_max_bs < 1:
            raise ConfigError(
                f"cuda_graph_max_bs must be >= 1 for a tensor model, got {self.cuda_graph_max_bs}"
            )
        if self.exported is None and (self.dim_rungs or self.mask_input is not None):
            raise ConfigError(
                "--dim-rungs and --mask-input describe an --exported program; a --module factory "
                "declares its dims and mask on its ModelSource, and an --onnx model has the batch only"
            )
        for name, axis, rungs in self.dim_rungs:
            if axis < 1 or not rungs or any(r < 1 for r in rungs):
                raise ConfigError(
                    f"--dim-rungs {name}:{axis}: the axis must be >= 1 (0 is the batch) and the rungs "
                    f"positive sizes, got {list(rungs)}"
                )
        bad = [size for size in self.cuda_graph_sizes if size < 1]
        if bad:
            raise ConfigError(f"cuda_graph_sizes must be positive batch sizes, got {bad}")

    @property
    def source(self) -> str:
        """The flag's value, for logs and /health."""
        return self.module if self.module is not None else str(self.exported or self.onnx)
