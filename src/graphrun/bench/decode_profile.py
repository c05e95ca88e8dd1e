"""The per-kernel profile of a graphed decode step: kernels grouped into classes, each against its floor.

`graphrun bench decode --profile` records the device kernels of N replays of the captured decode step
(kernel_trace.py); this module names what each kernel is and what it would cost at the bandwidth floor, so
the gap between a step and its floor (decode_report.py) can be attributed class by class. A class has a
floor where it must stream bytes nobody else reads: the projections their weights, the LM head its
weight, attention the filled KV cache. The rest (norms, rotary, sampling, copies) move a few KiB per
row and are judged by their count and time: each kernel of a graph still costs ~1-2 us on the device.

Classification is by kernel name: Triton kernels keep their Python function name (`_gemv_kernel`,
`_paged_decode_split_kernel`), cuBLAS and CUTLASS GEMMs carry `gemm`/`gemv`/`xmma`/`nvjet`/`cutlass`,
torch's own kernels the functor they run (`ArgMaxOps`, `FillFunctor`). Fused norm+GEMV kernels count
as projections (their norm has no kernel of its own). The LM head is named only when it runs on its own
kernel (`_skinny_matmul_kernel`, batch <= 16); above that it is a cuBLAS GEMM like the projections, so
within a step the last run of consecutive projection kernels (a GEMM and its split-K reduce) is taken to
be the LM head: it is the step's last product, and the final norm stands between it and the last layer's
down projection (a hazard if that norm is ever fused into the LM head: then revisit this rule).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graphrun.bench.decode_bytes import kv_bytes, lm_head_bytes, projection_bytes
from graphrun.bench.report import print_table

if TYPE_CHECKING:
    from graphrun.llm.config import ModelConfig

__all__ = [
    "PROFILE_REPLAYS",
    "Kernel",
    "KernelClass",
    "class_floor_bytes",
    "classify_name",
    "classify_step",
    "profile_summary",
]


PROFILE_REPLAYS = 20  # decode graph replays per batch size under the profiler


class KernelClass(enum.Enum):
    """What a decode step's kernel does, as far as its name tells."""

    PROJECTION = "projection"
    LM_HEAD = "lm_head"
    ATTENTION = "attention"
    NORM = "norm"
    ROTARY_CACHE = "rotary_cache"
    SAMPLING = "sampling"
    COPY = "copy"
    OTHER = "other"


# checked in this order, on the lower-cased name: the first class with a matching fragment wins
# (e.g. `_qk_norm_rope_write_kernel` is rotary/cache before it is a norm)
_PATTERNS: tuple[tuple[KernelClass, tuple[str, ...]], ...] = (
    (KernelClass.COPY, ("memcpy", "memset", "copy_kernel", "fillfunctor", "catarraybatchedcopy")),
    (KernelClass.LM_HEAD, ("skinny_matmul", "skinny_logits")),
    (KernelClass.ATTENTION, ("paged_decode", "paged_varlen", "attention", "attn", "fmha", "flash")),
    (KernelClass.ROTARY_CACHE, ("rope", "rotary", "qk_norm", "reshape_and_cache", "cache_write")),
    (KernelClass.NORM, ("rmsnorm", "rms_norm", "layer_norm", "layernorm")),
    (KernelClass.PROJECTION, ("gemv", "gemm", "xmma", "cutlass", "nvjet", "splitkreduce", "cublas")),
    (KernelClass.SAMPLING, ("argmax", "softmax", "topk", "sort", "multinomial", "exponential", "gumbel")),
)


@dataclass(frozen=True, slots=True)
class Kernel:
    """One device kernel (or memcpy/memset) as the profiler saw it, times in microseconds."""

    name: str
    start_us: float
    duration_us: float


def classify_name(name: str) -> KernelClass:
    """The class a kernel's name gives (the LM head's cuBLAS GEMM reads as a projection here)."""
    lowered = name.lower()
    for kernel_class, fragments in _PATTERNS:
        if any(fragment in lowered for fragment in fragments):
            return kernel_class
    return KernelClass.OTHER


def classify_step(names: Sequence[str]) -> list[KernelClass]:
    """Classes of one step's kernels in launch order: by name, then the LM head by position when no
    kernel is named as one (the last run of consecutive projection kernels)."""
    classes = [classify_name(name) for name in names]
    if KernelClass.LM_HEAD in classes or KernelClass.PROJECTION not in classes:
        return classes
    last = max(i for i, c in enumerate(classes) if c is KernelClass.PROJECTION)
    first = last
    while first > 0 and classes[first - 1] is KernelClass.PROJECTION:
        first -= 1
    classes[first : last + 1] = [KernelClass.LM_HEAD] * (last + 1 - first)
    return classes


def class_floor_bytes(
    config: ModelConfig, batch: int, context: float, itemsize: int
) -> dict[KernelClass, float]:
    """Bytes each class with a floor must read once per step (`context` cached tokens per sequence)."""
    return {
        KernelClass.PROJECTION: float(projection_bytes(config, itemsize)),
        KernelClass.LM_HEAD: float(lm_head_bytes(config, itemsize)),
        KernelClass.ATTENTION: kv_bytes(config, batch, context, itemsize),
    }


def split_replays(kernels: Sequence[Kernel], replays: int) -> list[list[Kernel]]:
    """Kernels in start order, cut into `replays` equal steps (a captured graph launches the same
    kernels every replay; a count that does not divide means something else ran on the device)."""
    ordered = sorted(kernels, key=lambda k: k.start_us)
    if replays < 1 or not ordered or len(ordered) % replays:
        raise ValueError(f"{len(ordered)} device kernels over {replays} replays: not a whole number per step")
    size = len(ordered) // replays
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def profile_summary(
    kernels: Sequence[Kernel], replays: int, floors: dict[KernelClass, float], bandwidth: float
) -> dict[str, Any]:
    """Per step: kernel count, device time, span (first start to last end) and per class count, time,
    share and floor; the distinct kernels by time. `bandwidth` in bytes/s, `floors` in bytes."""
    steps = split_replays(kernels, replays)
    per_class: dict[KernelClass, list[float]] = {c: [0.0, 0.0] for c in KernelClass}  # [count, us]
    per_name: dict[str, list[Any]] = {}
    for step in steps:
        for kernel, kernel_class in zip(step, classify_step([k.name for k in step]), strict=True):
            per_class[kernel_class][0] += 1
            per_class[kernel_class][1] += kernel.duration_us
            entry = per_name.setdefault(kernel.name, [kernel_class, 0, 0.0])
            entry[1] += 1
            entry[2] += kernel.duration_us
    busy_us = sum(us for _, us in per_class.values()) / replays
    span_us = sum(s[-1].start_us + s[-1].duration_us - s[0].start_us for s in steps) / replays
    classes = [
        _class_row(c, count / replays, us / replays, busy_us, floors.get(c), bandwidth)
        for c, (count, us) in per_class.items()
        if count
    ]
    top = sorted(per_name.items(), key=lambda item: -item[1][2])
    return {
        "replays": replays,
        "kernels_per_step": len(steps[0]),
        "device_ms_per_step": busy_us / 1e3,
        "span_ms_per_step": span_us / 1e3,  # busy time plus the gaps between kernels
        "classes": classes,
        "kernels": [
            {"name": name, "class": c.value, "per_step": n / replays, "ms_per_step": us / replays / 1e3}
            for name, (c, n, us) in top
        ],
    }


def _class_row(
    kernel_class: KernelClass, count: float, us: float, busy_us: float, floor: float | None, bandwidth: float
) -> dict[str, Any]:
    floor_ms = None if floor is None else floor / bandwidth * 1e3
    return {
        "class": kernel_class.value,
        "kernels_per_step": count,
        "ms_per_step": us / 1e3,
        "share": us / busy_us if busy_us else 0.0,
        "floor_bytes": floor,
        "floor_ms": floor_ms,
        "over_floor": us / 1e3 / floor_ms if floor_ms else None,
    }


PROFILE_COLUMNS = ("batch", "class", "kernels_per_step", "ms_per_step", "share", "floor_ms", "over_floor")


def print_profile(points: Sequence[dict[str, Any]]) -> None:
    """One table row per batch size and class, then each batch's kernel count and device time per step."""
    print("per-kernel profile of the graphed decode step (device time per step; floor at copy bandwidth):")
    rows = [{"batch": p["batch"], **row} for p in points if "classes" in p for row in p["classes"]]
    print_table(rows, PROFILE_COLUMNS)
    for p in points:
        if "error" in p:
            print(f"profile b{p['batch']} failed: {p['error']}")
            continue
        print(
            f"profile b{p['batch']} (context {p['context']}): {p['kernels_per_step']} kernels per step, "
            f"{p['device_ms_per_step']:.3f} ms busy, {p['span_ms_per_step']:.3f} ms first start to last end"
        )
