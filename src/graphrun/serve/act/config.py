"""Settings of a served policy: which policy, its denoising steps, graphs, device, batching.

One frozen dataclass, built from `graphrun serve --policy` flags (act/cli.py); the HTTP settings (port,
queue, keys, body limit, drain) stay in ServeConfig. Torch-free: the CLI checks it before torch loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphrun.errors import ConfigError
from graphrun.serve.infer.config import GRAPH_BACKENDS

BUILTIN_POLICIES = ("example",)
DTYPES = ("auto", "bfloat16", "float16", "float32")
DEFAULT_MAX_BATCH_SIZE = 8  # a policy serves a few robots at once: rungs 1, 2, 4, 8


@dataclass(frozen=True, slots=True)
class ActConfig:
    """What `graphrun serve --policy NAME|pkg.mod:factory` serves at POST /act, and how.

    policy: a built-in name (BUILTIN_POLICIES) or `pkg.mod:factory`, a factory that takes PolicySettings
    and returns a PolicySource (source.py). denoising_steps: the expert's steps per action chunk (None:
    the policy's default). device "auto": CUDA when present; dtype "auto": bfloat16 on CUDA, else float32.
    The graph flags are those of every served model (--graph-backend, --enforce-eager,
    --cuda-graph-sizes, --cuda-graph-max-bs): every stage gets that ladder. max_wait_ms and
    max_batch_requests coalesce concurrent /act calls as /v1/infer does; a request may carry at most the
    top rung's rows (400 above), so a batch never runs past the ladder.
    """

    policy: str = "example"
    denoising_steps: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    graph_backend: str = "auto"
    enforce_eager: bool = False
    cuda_graph_sizes: tuple[int, ...] = ()
    cuda_graph_max_bs: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_ms: float = 2.0
    max_batch_requests: int | None = None
    verify: bool = True

    def __post_init__(self) -> None:
        if self.policy not in BUILTIN_POLICIES and not _is_factory(self.policy):
            raise ConfigError(
                f"--policy takes a built-in policy {list(BUILTIN_POLICIES)} or pkg.mod:factory, "
                f"got {self.policy!r}"
            )
        if self.denoising_steps is not None and self.denoising_steps < 1:
            raise ConfigError(f"--denoising-steps must be >= 1, got {self.denoising_steps}")
        if self.graph_backend not in GRAPH_BACKENDS:
            raise ConfigError(f"graph_backend must be one of {GRAPH_BACKENDS}, got {self.graph_backend!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not self.max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0 (0: no wait), got {self.max_wait_ms}")
        if self.max_batch_requests is not None and self.max_batch_requests < 1:
            raise ConfigError(f"max_batch_requests must be >= 1, got {self.max_batch_requests}")
        if self.cuda_graph_max_bs < 1:
            raise ConfigError(f"cuda_graph_max_bs must be >= 1 for a policy, got {self.cuda_graph_max_bs}")
        bad = [size for size in self.cuda_graph_sizes if size < 1]
        if bad:
            raise ConfigError(f"cuda_graph_sizes must be positive batch sizes, got {bad}")


def _is_factory(spec: str) -> bool:
    module, sep, attr = spec.partition(":")
    return bool(module and sep and attr)
