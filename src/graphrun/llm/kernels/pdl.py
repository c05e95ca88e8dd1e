"""Programmatic dependent launch (PDL): whether our Triton kernels start before the previous kernel ends.

Why: a decode step is ~200 small kernels, and each pays a ramp (programs scheduled, first loads in
flight) and a tail (the last programs draining) during which the memory system idles. On Hopper and
later (compute capability >= 9) a kernel launched with the programmatic-stream-serialization attribute
(Triton: the launch option `launch_pdl=True`) may start while the kernel before it in the stream still
runs; under CUDA graph capture (CUDA >= 12.3) the attribute becomes a programmatic edge of the graph.
Such a kernel must itself hold back what depends on earlier work: `tl.extra.cuda.gdc_wait()`
(PTX griddepcontrol.wait) returns once every prerequisite grid has completed and its memory operations
are visible. `gdc_launch_dependents()` (griddepcontrol.launch_dependents) only lets the next kernel be
scheduled early: it publishes nothing, and the next kernel's wait still waits for this whole grid, so
where it sits changes overlap, never correctness (PTX ISA, "griddepcontrol").

The contract every kernel launched with `launch_options` keeps (USE_PDL set):
1. every program reaches gdc_wait on every path, before its first load of anything an earlier kernel of
   the stream may write (activations, the KV cache, per-step inputs, even block tables: the decode
   graph casts them in-graph) and before its first store (graph pool memory is reused, so a store could
   land in a buffer the previous kernel still reads);
2. before the wait it loads only weights, which nothing writes during a step: that is where PDL pays,
   a projection's first weight tile streaming in while the previous kernel drains;
3. it calls gdc_launch_dependents only after its own wait, so the next kernel's early weight loads are
   ordered after everything before this one;
4. since no program can finish before its wait returns, a kernel cannot complete before its predecessor:
   completion stays ordered along the stream, and one wait covers all earlier work, not only the
   previous kernel's.
Kernels launched without PDL (cuBLAS, torch ops) between ours keep normal stream order: they start
after our completion; ours after them triggers when they complete and still waits at gdc_wait for
their memory (gdc_wait is a no-op where there is no programmatic dependency).

The decision is made here only (launch_options asks pdl_supported); no flag or environment variable
changes it. It is on wherever supported: benchmarks/pdl_ab.py measured it against off in the greedy
decode graph of qwen3-0.6b-shape (H100, results/experiments/pdl-ab-nvidia-h100-80gb-hbm3.json): the
same tokens, the step 9% shorter at batch 1 and 5% at 4, even at 16 and 64. Where it is off
(pdl_supported, asked once per device): on the CPU, under Triton's CPU interpreter (it has no grid
dependency control), on GPUs below compute capability 9, with a torch built for CUDA < 12.3, or with a
Triton that lacks the gdc ops or the launch option.
"""

from __future__ import annotations

import functools

import torch
import triton

MIN_CAPABILITY_MAJOR = 9  # Hopper
MIN_CUDA = (12, 3)  # stream capture turns the launch attribute into a programmatic graph edge


def pdl_supported(device: torch.device) -> bool:
    """Whether `device` and this Triton can launch our kernels with programmatic dependent launch."""
    if device.type != "cuda" or not _triton_supports_pdl():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _device_supports_pdl(index)


def launch_options(device: torch.device) -> dict[str, bool]:
    """The keyword arguments a kernel of ours launches with on `device`: its USE_PDL constexpr and, when
    on, Triton's launch_pdl option (left out when off, so a Triton without that option still runs)."""
    if pdl_supported(device):
        return {"USE_PDL": True, "launch_pdl": True}
    return {"USE_PDL": False}


@functools.cache
def _device_supports_pdl(index: int) -> bool:
    """Compute capability >= 9 and a torch built for CUDA >= 12.3 (asked once per device)."""
    major, _ = torch.cuda.get_device_capability(index)
    return major >= MIN_CAPABILITY_MAJOR and cuda_version(torch.version.cuda) >= MIN_CUDA


def cuda_version(text: str | None) -> tuple[int, int]:
    """'12.8' -> (12, 8); (0, 0) for a torch without CUDA (None) or a version it cannot read."""
    parts = (text or "").split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


@functools.cache
def _triton_supports_pdl() -> bool:
    """Whether this Triton compiles kernels (its CPU interpreter has no grid dependency control) and has
    the device ops (gdc_wait, gdc_launch_dependents) and the launch option."""
    if _interpreting():
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
        from triton.language.extra import cuda
    except ImportError:
        return False
    has_option = "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})
    return has_option and hasattr(cuda, "gdc_wait") and hasattr(cuda, "gdc_launch_dependents")


def _interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (Triton's own setting, read through Triton)."""
    knobs = getattr(triton, "knobs", None)
    return bool(knobs is not None and knobs.runtime.interpret)
