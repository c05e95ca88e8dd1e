"""The paged KV cache: its shape, how many blocks fit in a memory budget, and the one allocation.

Allocated once at start-up from a fraction of GPU memory (vLLM's --gpu-memory-utilization) and never
resized, so decode graphs can capture its addresses. Layout per layer follows
`graphrun.llm.layers.attention`: k_cache, v_cache of shape (num_blocks, block_size, num_kv_heads,
head_dim). The block count is measured here and lives on the objects built from it (BlockManager).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

import torch

from graphrun.errors import BackendUnavailableError, ConfigError
from graphrun.llm.config import ModelConfig
from graphrun.llm.parallel.config import ParallelConfig
from graphrun.llm.parallel.shards import ShardLayout

logger = logging.getLogger(__name__)

MIB = 1 << 20


class KVCacheBudgetError(ConfigError):
    """The memory budget is too small for the cache graphrun needs."""


@dataclass(frozen=True, slots=True)
class KVCacheSpec:
    """Shape and dtype of the cache: enough to size one block and allocate all of them."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int = 16
    dtype: torch.dtype = torch.bfloat16

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"KVCacheSpec.{name} must be a positive int, got {value!r}")
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ConfigError(f"KVCacheSpec.dtype must be a floating torch.dtype, got {self.dtype!r}")

    @classmethod
    def from_model(
        cls,
        config: ModelConfig,
        block_size: int = 16,
        dtype: torch.dtype | None = None,
        parallel: ParallelConfig | None = None,
    ) -> KVCacheSpec:
        """The cache a model needs; dtype defaults to the model's own. With `parallel`, the cache of one
        tensor-parallel rank: its own KV heads only (parallel/shards.py)."""
        if dtype is None:
            dtype = getattr(torch, config.dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise ConfigError(
                    f"model dtype {config.dtype!r} is not a torch dtype; pass dtype= explicitly"
                )
        kv_heads = config.num_kv_heads
        if parallel is not None:
            kv_heads = ShardLayout.from_model(config, parallel).num_kv_heads
        return cls(config.num_layers, kv_heads, config.head_dim, block_size, dtype)

    @property
    def bytes_per_block(self) -> int:
        """Bytes of one block across all layers, K and V."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * itemsize


def num_blocks_for_budget(spec: KVCacheSpec, budget_bytes: int, min_blocks: int = 2) -> int:
    """How many whole blocks fit in budget_bytes; raises KVCacheBudgetError below min_blocks.

    min_blocks defaults to 2 because the block manager keeps block 0 as a scratch block for padding,
    so a usable cache needs at least one more.
    """
    num_blocks = max(budget_bytes, 0) // spec.bytes_per_block
    if num_blocks < min_blocks:
        raise KVCacheBudgetError(
            f"KV cache budget {budget_bytes / MIB:.1f} MiB holds {num_blocks} blocks of "
            f"{spec.bytes_per_block / MIB:.2f} MiB, need at least {min_blocks}; raise "
            "--gpu-memory-utilization (or free GPU memory) or lower max_model_len"
        )
    return num_blocks


def gpu_kv_budget(gpu_memory_utilization: float, device: torch.device | str | int) -> int:
    """Bytes left for the KV cache: utilization * total - (total - free), measured now.

    Call it after the model weights are loaded (and, ideally, after one profiling forward at the largest
    batch), so that weights, activation peaks and other processes' memory count as already used; the
    cache then takes what is left under the utilization cap. Cached-but-free allocator blocks are
    released first (empty_cache) so they are not mistaken for memory in use, after a garbage collection:
    an engine dropped by its owner but still in a reference cycle would otherwise keep its cache and graph
    pools until the collector happened to run (two engines made in turn, as tests and notebooks do, saw
    the first one's 90% as used). Negative when the model
    alone exceeds the cap; `num_blocks_for_budget` turns that into a clear error.
    """
    if not 0 < gpu_memory_utilization <= 1:
        raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"gpu_kv_budget measures CUDA memory; device {device} is not a CUDA device"
        )
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    budget = int(gpu_memory_utilization * total - (total - free))
    logger.debug("KV budget %.1f MiB (free %.1f MiB of %.1f MiB)", budget / MIB, free / MIB, total / MIB)
    return budget


def allocate_kv_cache(
    spec: KVCacheSpec, num_blocks: int, device: torch.device | str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Allocate the whole cache as ONE zeroed tensor and return per-layer (k_cache, v_cache) views.

    One allocation: it either fits or fails at once with a clear error (no half-built cache), and the
    memory is one contiguous range. Layout (num_layers, 2, num_blocks, block_size, kv_heads, head_dim);
    each view is contiguous. Zeroed, not empty: decode attention reads padded block-table entries and
    masks them, and 0 * NaN garbage would still poison the output.
    """
    if num_blocks < 1:
        raise KVCacheBudgetError(f"num_blocks must be >= 1, got {num_blocks}; see num_blocks_for_budget")
    shape = (spec.num_layers, 2, num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
    size_mib = num_blocks * spec.bytes_per_block / MIB
    try:
        cache = torch.zeros(shape, dtype=spec.dtype, device=device)
    except torch.OutOfMemoryError as e:
        raise KVCacheBudgetError(
            f"allocating the KV cache ({num_blocks} blocks, {size_mib:.1f} MiB) ran out of memory; "
            "lower --gpu-memory-utilization or free GPU memory"
        ) from e
    logger.info(
        "KV cache: %d blocks of %d tokens, %.1f MiB on %s", num_blocks, spec.block_size, size_mib, device
    )
    return [(cache[layer, 0], cache[layer, 1]) for layer in range(spec.num_layers)]
