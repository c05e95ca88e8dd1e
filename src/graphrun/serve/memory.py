"""Memory for /health: what the engine's device holds now, and the engine process's peak RSS.

Read at request time in the process that runs the engine, while it steps. Every call here only reads
counters (the CUDA caching allocator's statistics, cudaMemGetInfo, getrusage), so it needs no lock and
never waits for the engine's step.
"""

from __future__ import annotations

import resource
import sys

import torch


def max_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def memory_now(device: torch.device | None) -> dict[str, int]:
    """The process's peak RSS; on CUDA also the allocator's reserved/allocated/peak and the device's free."""
    out = {"max_rss_bytes": max_rss_bytes()}
    if device is not None and device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        out |= {
            "cuda_reserved_bytes": torch.cuda.memory_reserved(device),
            "cuda_allocated_bytes": torch.cuda.memory_allocated(device),
            "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "cuda_free_bytes": int(free),
            "cuda_total_bytes": int(total),
        }
    return out
