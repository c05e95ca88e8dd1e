"""The sampling kernel's slow path: passes of one program over one row, for rows the fast path leaves open.

kernels/sampling.py decides most restricted rows (top-k, top-p) from the row's top K_PAD keys. A row is
left open when every one of those keys is allowed: a nucleus wider than K_PAD tokens, or top-k above
K_PAD. Then the allowed set S is still an upper set of the key order, and the answer is the Gumbel-max
winner over S. `walk` finds it without sorting:
- c = the winner over the whole row (the split kernel found it); if c ranks inside the top K_PAD it is
  in S, and as the winner over a superset of S it is the answer;
- else one pass counts the keys above c and sums their exp(v - max): c is in S iff fewer than k keys
  are above it and that mass is <= top_p times the normaliser. If so, c is the answer;
- else no key at or below c is in S (S is an upper set): the next c is the winner over the keys above
  c (one pass with noise, seeded with the top K_PAD's winner; a tile whose best value plus the largest
  possible noise cannot beat the seed skips the noise), and the check repeats.
Each failed check moves c strictly up, and the top K_PAD are all in S, so the walk ends. For top-p the
check passes with probability about top_p per step, so most open rows take one counting pass.

`top_k_mass` gives the normaliser of top-k when both top-k (above K_PAD) and top-p are on: a radix
select of the k-th largest value (four 8-bit digit histograms, counts only), then one pass summing the
mass above it plus the tied share at it (ties rank by id, and tied values carry equal mass).
Every pass re-reads the row and rescales it (v = x / T, IEEE division as the reference's).
"""

from __future__ import annotations

import triton
import triton.language as tl

from graphrun.llm.kernels.sampling_keys import (
    G_MAX,
    INT32_MIN,
    best_of,
    better,
    gumbel,
    make_keys,
    ordered,
    unordered,
)


@triton.jit
def scaled_tile(row_ptr, start, vocab, temperature, TILE: tl.constexpr):
    """Tile [start, start + TILE) of a row: ids, in-vocabulary mask, v = x / T, int32 orders (padding
    INT32_MIN)."""
    ids = start + tl.arange(0, TILE)
    ok = ids < vocab
    x = tl.load(row_ptr + ids, mask=ok, other=float("-inf")).to(tl.float32)
    v = tl.math.div_rn(x, temperature)
    return ids, ok, v, tl.where(ok, ordered(v), INT32_MIN)


@triton.jit
def mass_above(row_ptr, vocab, temperature, shift, c_key, TILE: tl.constexpr):
    """(count, sum of exp(v - shift)) over the row's keys above c_key."""
    count = tl.full((), 0, tl.int32)
    mass = tl.full((), 0.0, tl.float32)
    for start in range(0, vocab, TILE):
        ids, _, v, o = scaled_tile(row_ptr, start, vocab, temperature, TILE)
        above = make_keys(o, ids) > c_key
        count += tl.sum(above.to(tl.int32), 0)
        mass += tl.sum(tl.where(above, tl.exp(v - shift), 0.0), 0)
    return count, mass


@triton.jit
def best_above(row_ptr, vocab, temperature, base, c_key, best_pv, best_key, TILE: tl.constexpr,
               PRECISE: tl.constexpr):  # fmt: skip
    """The Gumbel-max winner (pv, key) over the keys above c_key, starting from a known one above it."""
    for start in range(0, vocab, TILE):
        ids, _, v, o = scaled_tile(row_ptr, start, vocab, temperature, TILE)
        keys = make_keys(o, ids)
        above = keys > c_key
        if tl.max(tl.where(above, v, float("-inf")), 0) + G_MAX >= best_pv:
            tile_pv, tile_key = best_of(v + gumbel(base, ids, PRECISE), keys, above)
            wins = better(tile_pv, tile_key, best_pv, best_key)
            best_pv = tl.where(wins, tile_pv, best_pv)
            best_key = tl.where(wins, tile_key, best_key)
    return best_pv, best_key


@triton.jit
def allowed(count, mass, z_k, k_eff, top_p):
    """Whether a key with `count` keys and `mass` above it is in S (top-k, then top-p as the reference)."""
    return (count < k_eff) & ((top_p >= 1.0) | (tl.math.div_rn(mass, z_k) <= top_p))


@triton.jit
def walk(row_ptr, vocab, temperature, base, shift, z_k, k_eff, top_p, c_key, list_min, seed_pv, seed_key,
         TILE: tl.constexpr, PRECISE: tl.constexpr):  # fmt: skip
    """The answer's key for a row whose top K_PAD keys (list_min and up) are all in S: c_key is the
    winner over the whole row, (seed_pv, seed_key) the winner over the top K_PAD."""
    done = c_key >= list_min
    while not done:
        count, mass = mass_above(row_ptr, vocab, temperature, shift, c_key, TILE)
        ok = allowed(count, mass, z_k, k_eff, top_p)
        if not ok:
            _, c_key = best_above(row_ptr, vocab, temperature, base, c_key, seed_pv, seed_key, TILE, PRECISE)
        done = ok | (c_key >= list_min)
    return c_key


@triton.jit
def _digit_counts(row_ptr, vocab, temperature, prefix, SHIFT: tl.constexpr, TILE: tl.constexpr):
    """Counts of the 8-bit digit at SHIFT among tokens whose biased order has `prefix` above it."""
    counts = tl.zeros((256,), tl.int32)
    for start in range(0, vocab, TILE):
        _, ok, _, o = scaled_tile(row_ptr, start, vocab, temperature, TILE)
        biased = o.to(tl.int64) - INT32_MIN  # 0 .. 2**32 - 1, same order
        match = ok & ((biased >> (SHIFT + 8)) == prefix)
        counts += tl.histogram(((biased >> SHIFT) & 255).to(tl.int32), 256, mask=match)
    return counts


@triton.jit
def top_k_mass(row_ptr, vocab, temperature, shift, k_eff, TILE: tl.constexpr):
    """Sum of exp(v - shift) over the row's k_eff largest keys (one program: 5 passes)."""
    prefix = tl.full((), 0, tl.int64)
    above = tl.full((), 0, tl.int32)  # tokens known to rank above the prefix's range
    digits = tl.arange(0, 256)
    for d in tl.static_range(4):
        counts = _digit_counts(row_ptr, vocab, temperature, prefix, 24 - 8 * d, TILE)
        reach = above + tl.cumsum(counts, 0, reverse=True)  # tokens at or above each digit
        digit = tl.max(tl.where(reach >= k_eff, digits, -1), 0)
        above += tl.sum(tl.where(digits > digit, counts, 0), 0)
        prefix = prefix * 256 + digit
    kth = (prefix + INT32_MIN).to(tl.int32)  # the k-th largest order; k_eff - above tokens tie at it
    mass = tl.full((), 0.0, tl.float32)
    for start in range(0, vocab, TILE):
        _, _, v, o = scaled_tile(row_ptr, start, vocab, temperature, TILE)
        mass += tl.sum(tl.where(o > kth, tl.exp(v - shift), 0.0), 0)
    return mass + (k_eff - above).to(tl.float32) * tl.exp(unordered(kth) - shift)
