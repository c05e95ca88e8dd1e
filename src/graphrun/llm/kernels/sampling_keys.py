"""The sampling kernels' building blocks (Triton, inlined): order keys, the hashed Gumbel noise, selection.

Every helper reproduces one step of the torch sampler (llm/sampler.py) bit for bit, so the kernels
(kernels/sampling.py) pick the same token:
- order: torch's stable descending sort ranks tokens by scaled logit, equal values by lower id. A key is
  one int64 in that order: the float32 value mapped to an order-preserving int32 in the high half
  (-0.0 as +0.0: the sort holds them equal), (2**31 - 1 - id) in the low half. Keys are unique.
- noise: uniform_noise's hash done in 32-bit wrapping arithmetic (the reference masks int64 products
  to 32 bits after every multiply, the same residue), then -log(-log(u)) with libdevice's logf, which
  torch's CUDA log calls; Triton's own tl.log is an approximation. The CPU interpreter has no libdevice
  (PRECISE off): NumPy's log there, within an ulp of torch's CPU log.
- selection: the K largest of a block without sorting, by a binary search on the int32 order for the
  K-th largest value (a reduction per step), then ties at it taken lowest index first.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

from graphrun.llm.noise import NOISE_MIX

INT32_MIN = tl.constexpr(-(2**31))  # the order of a position past the vocabulary: below -inf's
INT64_MIN = tl.constexpr(-(2**63))  # the key of such a position with id part 0, below every real key
ID_BASE = tl.constexpr(2**31 - 1)  # a key's low half is ID_BASE - id: a lower id ranks first on a tie
MIX0, MIX1, MIX2, MIX3 = (tl.constexpr(m) for m in NOISE_MIX)
G_MAX = tl.constexpr(17.5)  # above any Gumbel value: u <= 1 - 2**-25 gives at most 17.33


@triton.jit
def _log(x, PRECISE: tl.constexpr):
    return libdevice.log(x) if PRECISE else tl.log(x)


@triton.jit
def noise_base(seed, position):
    """A row's hash state before the token id is mixed in (uint32), as uniform_noise computes it."""
    return ((seed & 0x7FFFFFFF) * MIX0 + (position & 0x7FFFFFFF) * MIX1).to(tl.uint32)


@triton.jit
def gumbel(base, ids, PRECISE: tl.constexpr):
    """-log(-log(uniform_noise(seed, position, ids))) for int32 ids, float32 as the reference adds it."""
    x = base + ids.to(tl.uint32) * MIX2
    x = (x ^ (x >> 16)) * MIX3
    x = (x ^ (x >> 16)) * MIX0
    x = x ^ (x >> 15)
    u = ((x >> 9).to(tl.float32) + 0.5) * (1.0 / (1 << 23))  # below 1.0 in float32, as the reference
    return -_log(-_log(u, PRECISE), PRECISE)


@triton.jit
def ordered(v):
    """float32 -> int32 in the same order (-0.0 mapped as +0.0)."""
    bits = tl.where(v == 0.0, 0.0, v).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def unordered(o):
    """int32 order -> its float32 value (the mapping is its own inverse)."""
    return (o ^ ((o >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def make_keys(o, ids):
    """int32 orders and int32 ids -> int64 keys: larger key = earlier in the stable descending sort."""
    return (o.to(tl.int64) << 32) | (-ids + ID_BASE).to(tl.int64)


@triton.jit
def key_order(keys):
    return (keys >> 32).to(tl.int32)


@triton.jit
def key_ids(keys):
    return -keys.to(tl.int32) + ID_BASE  # the low half, truncated


@triton.jit
def kth_largest(o, K):
    """The K-th largest of the int32 orders `o` (K <= their number): count(o >= t) >= K > count(o > t)."""
    lo = tl.min(o, 0).to(tl.int64)  # every element is >= the minimum
    hi = tl.max(o, 0).to(tl.int64)
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        enough = tl.sum((o >= mid).to(tl.int32), 0) >= K
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid - 1)
    return lo.to(tl.int32)


@triton.jit
def top_mask(o, K):
    """A mask of exactly K elements: the K largest orders, ties at the K-th taken lowest index first."""
    t = kth_largest(o, K)
    above = o > t
    tied = o == t
    need = K - tl.sum(above.to(tl.int32), 0)
    return above | (tied & (tl.cumsum(tied.to(tl.int32), 0) <= need))


@triton.jit
def best_of(pv, keys, live):
    """(pv, key) of the live element that wins Gumbel-max: the largest pv, on a tie the largest key (the
    earlier in the sort, as torch's argmax over the sorted row takes the first)."""
    pv = tl.where(live, pv, float("-inf"))
    top = tl.max(pv, 0)
    return top, tl.max(tl.where(live & (pv == top), keys, INT64_MIN), 0)


@triton.jit
def better(pv, key, other_pv, other_key):
    """Whether (pv, key) beats (other_pv, other_key) in Gumbel-max order."""
    return (pv > other_pv) | ((pv == other_pv) & (key > other_key))


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (Triton's own setting): no libdevice there."""
    knobs = getattr(triton, "knobs", None)
    return bool(knobs is not None and knobs.runtime.interpret)
