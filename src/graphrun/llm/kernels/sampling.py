"""In-graph sampling without sorting: the tokens of llm/sampler.py's `sample`, in two Triton launches.

Why: `sample` sorts every row's whole vocabulary (151,936 ids for Qwen3), then runs a softmax, a cumsum,
masks and the noise over the sorted row. On an H200 that made the sampling decode graph 0.22 ms dearer
than the greedy one at batch 1 and 2.05 ms at batch 64, half the step (issue 18).

What it computes, exactly as the reference: rows with temperature <= 0 take the argmax of the raw
logits. Other rows scale v = x / max(T, 1e-5) and rank tokens in the stable descending order (by v,
equal values by lower id). The allowed set S keeps rank < k (top-k; 0 = off) and, of those, every
token whose top-k-renormalised mass strictly before it is <= top_p (the first always; top_p >= 1 =
off). The answer is the Gumbel-max winner over S: the largest v + g, g = -log(-log(u)) with u hashed
from (seed, position, token id). The noise depends on the id, not on the order, and both cuts are
monotone in rank, so S is an upper set of the order: "every key >= some key". That is what lets the
kernels skip the sort:
- the winner over all tokens is one reduction (no sort, no softmax): temperature-only rows are
  done after one pass over the logits;
- if S lies within the row's top K_PAD keys, which those keys themselves show (one of them is not in
  S), the answer is the winner over S computed there; the top K_PAD of a row come from each chunk's
  top K_PAD (a binary search for the K-th value, no sort), and rank and mass before each of them from
  a K_PAD x K_PAD comparison. Top-k <= K_PAD and a nucleus narrower than K_PAD tokens end here;
- else (a wide nucleus, top-k > K_PAD) one program walks the row (kernels/sampling_passes.py): the
  winner over all tokens is the answer if it is in S, one counting pass decides that, and if not the
  next candidate is the winner above it.
Launches, both graph-safe (no host sync, shapes fixed by rows, vocab and block):
- split, grid (rows, chunks of BLOCK): per chunk the Gumbel winner (pv, key); for rows with top-k or
  top-p also the chunk's max, sum of exp(v - max), and top K_PAD keys;
- finish, grid (rows,): merges them, decides, walks where needed, stores the token.
On Hopper both launch with programmatic dependent launch (kernels/pdl.py): each waits before its first
load (all it reads is earlier kernels' output) and lets the next kernel launch after its first loads.

Why this shape, not another: a graph fixes the launches, so a design that iterates over the row with
many programs (check the winner, raise the bar, repeat) needs a fixed number of extra launch pairs on
every step, paid even by rows that need none; a radix select of the top-k / top-p threshold across
programs needs four or more. Iterating inside one program per row is free of launches but streams
600 KB per pass on one SM, so it is kept for what the top-K_PAD list cannot decide. Each chunk finds
its top K_PAD by a binary search on the value order and a prefix sum, not tl.topk, a sorting network:
an earlier logprobs writer that sorted every chunk with it took 208 us for 64 rows on an H200, about
20x the time to read those logits once; on an H100 the kernels that replaced it, which take candidates
from only k chunks of a row (kernels/logprobs.py), took 35 us against its 209. Costs here are not measured yet
(benchmarks/sampler_ab.py is the A/B against sample).

Exactness: the same token as `sample` for every row, except where a float rounding decides: the top-p
mass is summed in another order than the reference's cumsum, so a cumulative mass within a few ulps of
top_p may fall on the other side; and two perturbed values exactly equal (then the earlier key wins,
as the reference's argmax takes the first sorted position). The scaling (IEEE division) and the noise
(the same hash, libdevice's logf as torch's CUDA log) are bit-identical on the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from graphrun.llm.kernels import pdl
from graphrun.llm.kernels.sampling_keys import (
    INT32_MIN,
    INT64_MIN,
    best_of,
    gumbel,
    interpreting,
    key_ids,
    key_order,
    make_keys,
    noise_base,
    ordered,
    top_mask,
    unordered,
)
from graphrun.llm.kernels.sampling_passes import top_k_mass, walk

K_PAD = 64  # keys per chunk and per row's list: top-k up to 64 and nuclei up to 64 tokens end in finish
DEFAULT_BLOCK = 4096  # logits per split program (unmeasured)
DEFAULT_TILE = 4096  # logits per step of the finish kernel's passes over a row


@triton.jit
def _row_params(temperature_ptr, top_k_ptr, top_p_ptr, seeds_ptr, positions_ptr, row, stride_t, stride_k,
                stride_p, stride_s, stride_pos, vocab):  # fmt: skip
    """A row's (temperature, effective k, top_p, noise base); k is vocab where top-k is off."""
    t = tl.load(temperature_ptr + row * stride_t).to(tl.float32)
    k = tl.load(top_k_ptr + row * stride_k).to(tl.int32)
    top_p = tl.load(top_p_ptr + row * stride_p).to(tl.float32)
    seed = tl.load(seeds_ptr + row * stride_s).to(tl.int64)
    position = tl.load(positions_ptr + row * stride_pos).to(tl.int64)
    return t, tl.where((k > 0) & (k < vocab), k, vocab), top_p, noise_base(seed, position)


@triton.jit
def _restricted(t, k_eff, top_p, vocab):
    """Whether a row samples under top-k or top-p (needs more than the overall winner)."""
    return (t > 0) & ((k_eff < vocab) | (top_p < 1.0))


@triton.jit
def _finite(m):
    return tl.where(m == float("-inf"), 0.0, m)  # a max of -inf only: shift by 0, sums stay 0, not NaN


@triton.jit
def _sample_split_kernel(
    logits_ptr, temperature_ptr, top_k_ptr, top_p_ptr, seeds_ptr, positions_ptr,
    best_pv_ptr, best_key_ptr, max_ptr, sum_ptr, keys_ptr,
    vocab, stride_row, stride_t, stride_k, stride_p, stride_s, stride_pos, num_chunks,
    BLOCK: tl.constexpr, K_PAD: tl.constexpr, PRECISE: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """One (row, chunk): the chunk's Gumbel winner; for restricted rows its max, mass and top K_PAD keys."""
    if USE_PDL:  # the logits are the LM head's output, the parameters this step's inputs (kernels/pdl.py)
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    ids = chunk * BLOCK + tl.arange(0, BLOCK)
    ok = ids < vocab
    x = tl.load(logits_ptr + row.to(tl.int64) * stride_row + ids, mask=ok, other=float("-inf"))
    t, k_eff, top_p, base = _row_params(
        temperature_ptr, top_k_ptr, top_p_ptr, seeds_ptr, positions_ptr, row,
        stride_t, stride_k, stride_p, stride_s, stride_pos, vocab,
    )  # fmt: skip
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    x = x.to(tl.float32)
    v = tl.where(t > 0, tl.math.div_rn(x, tl.maximum(t, 1e-5)), x)  # greedy rows: the raw logits
    o = tl.where(ok, ordered(v), INT32_MIN)
    keys = make_keys(o, ids)
    pv = v
    if t > 0:
        pv = v + gumbel(base, ids, PRECISE)
    part = row * num_chunks + chunk
    best_pv, best_key = best_of(pv, keys, ok)
    tl.store(best_pv_ptr + part, best_pv)
    tl.store(best_key_ptr + part, best_key)
    if _restricted(t, k_eff, top_p, vocab):
        v = tl.where(ok, v, float("-inf"))
        chunk_max = tl.max(v, 0)
        tl.store(max_ptr + part, chunk_max)
        tl.store(sum_ptr + part, tl.sum(tl.exp(v - _finite(chunk_max)), 0))
        top = top_mask(o, K_PAD)  # exactly K_PAD, kept in id order
        tl.store(keys_ptr + part * K_PAD + tl.cumsum(top.to(tl.int32), 0) - 1, keys, mask=top)


@triton.jit
def _row_normaliser(max_ptr, sum_ptr, row, num_chunks, CHUNKS_PAD: tl.constexpr):
    """(shift, sum of exp(v - shift) over the row) from the chunks; shift is the row's max (0 if -inf)."""
    chunks = tl.arange(0, CHUNKS_PAD)
    live = chunks < num_chunks
    chunk_max = tl.load(max_ptr + row * num_chunks + chunks, mask=live, other=float("-inf"))
    chunk_sum = tl.load(sum_ptr + row * num_chunks + chunks, mask=live, other=0.0)
    shift = _finite(tl.max(chunk_max, 0))
    return shift, tl.sum(chunk_sum * tl.exp(chunk_max - shift), 0)


@triton.jit
def _top_list(keys_ptr, list_ptr, row, num_chunks, K_PAD: tl.constexpr, CHUNKS_PAD: tl.constexpr):
    """The row's K_PAD largest keys (in no particular order) from its chunks' K_PAD largest each: exact,
    since a key missing from its chunk's list has K_PAD larger keys in that list."""
    slots = tl.arange(0, CHUNKS_PAD * K_PAD)
    candidates = tl.load(keys_ptr + row * num_chunks * K_PAD + slots, mask=slots < num_chunks * K_PAD,
                         other=INT64_MIN)  # fmt: skip
    top = top_mask(key_order(candidates), K_PAD)  # ties lowest slot first: slots are in id order
    tl.store(list_ptr + row * K_PAD + tl.cumsum(top.to(tl.int32), 0) - 1, candidates, mask=top)
    tl.debug_barrier()  # the program's threads read back what the others stored
    return tl.load(list_ptr + row * K_PAD + tl.arange(0, K_PAD))


@triton.jit
def _restricted_choice(row_ptr, max_ptr, sum_ptr, keys_ptr, list_ptr, row, num_chunks, vocab, temperature,
                       k_eff, top_p, base, c_key, K_PAD: tl.constexpr, CHUNKS_PAD: tl.constexpr,
                       TILE: tl.constexpr, PRECISE: tl.constexpr):  # fmt: skip
    """The answer's key for a top-k / top-p row whose overall Gumbel winner is c_key."""
    shift, z_full = _row_normaliser(max_ptr, sum_ptr, row, num_chunks, CHUNKS_PAD)
    top = _top_list(keys_ptr, list_ptr, row, num_chunks, K_PAD, CHUNKS_PAD)  # (K_PAD,)
    o = key_order(top)
    real = o != INT32_MIN
    v = unordered(o)
    e = tl.where(real, tl.exp(v - shift), 0.0)
    above = top[None, :] > top[:, None]  # (K_PAD, K_PAD): [i, j] = key j ranks before key i
    rank = tl.sum(above.to(tl.int32), 1)
    before = tl.sum(tl.where(above, e[None, :], 0.0), 1)
    complete = tl.sum((~real | (v == float("-inf"))).to(tl.int32), 0) > 0  # the rest is -inf or absent
    listed_k = complete | (k_eff <= K_PAD)  # the top-k set lies in the list
    z_k = tl.where(listed_k, tl.sum(tl.where(rank < k_eff, e, 0.0), 0), z_full)
    if (top_p < 1.0) & (k_eff < vocab) & ~listed_k:
        z_k = top_k_mass(row_ptr, vocab, temperature, shift, k_eff, TILE)
    nucleus = (rank == 0) | (tl.math.div_rn(before, z_k) <= top_p)
    keep = real & (rank < k_eff) & tl.where(top_p < 1.0, nucleus, True)
    seed_pv, seed_key = best_of(v + gumbel(base, key_ids(top), PRECISE), top, keep)
    if complete | (tl.sum((real & ~keep).to(tl.int32), 0) > 0):  # S ends inside the list
        choice = seed_key
    else:
        choice = walk(row_ptr, vocab, temperature, base, shift, z_k, k_eff, top_p, c_key, tl.min(top, 0),
                      seed_pv, seed_key, TILE, PRECISE)  # fmt: skip
    return choice


@triton.jit
def _sample_finish_kernel(
    logits_ptr, temperature_ptr, top_k_ptr, top_p_ptr, seeds_ptr, positions_ptr,
    best_pv_ptr, best_key_ptr, max_ptr, sum_ptr, keys_ptr, list_ptr, out_ptr,
    vocab, stride_row, stride_t, stride_k, stride_p, stride_s, stride_pos, num_chunks,
    K_PAD: tl.constexpr, CHUNKS_PAD: tl.constexpr, TILE: tl.constexpr, PRECISE: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    """One row: the overall winner from the chunks, then top-k / top-p if the row has them; the token."""
    if USE_PDL:  # the chunks are the split kernel's
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    chunks = tl.arange(0, CHUNKS_PAD)
    live = chunks < num_chunks
    chunk_pv = tl.load(best_pv_ptr + row * num_chunks + chunks, mask=live, other=float("-inf"))
    chunk_key = tl.load(best_key_ptr + row * num_chunks + chunks, mask=live, other=INT64_MIN)
    t, k_eff, top_p, base = _row_params(
        temperature_ptr, top_k_ptr, top_p_ptr, seeds_ptr, positions_ptr, row,
        stride_t, stride_k, stride_p, stride_s, stride_pos, vocab,
    )  # fmt: skip
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    _, c_key = best_of(chunk_pv, chunk_key, live)
    if _restricted(t, k_eff, top_p, vocab):
        c_key = _restricted_choice(logits_ptr + row.to(tl.int64) * stride_row, max_ptr, sum_ptr, keys_ptr,
                                   list_ptr, row, num_chunks, vocab, tl.maximum(t, 1e-5), k_eff, top_p, base,
                                   c_key, K_PAD, CHUNKS_PAD, TILE, PRECISE)  # fmt: skip
    tl.store(out_ptr + row, key_ids(c_key).to(tl.int64))


def fused_sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    seeds: torch.Tensor,
    positions: torch.Tensor,
    block: int = DEFAULT_BLOCK,
    k_pad: int = K_PAD,
    tile: int = DEFAULT_TILE,
) -> torch.Tensor:
    """(n, vocab) logits and (n,) parameters (SamplingTensors' fields, any stride) -> (n,) int64 tokens,
    the tokens `sample` gives (see the module docstring for the rounding caveat)."""
    n, vocab = logits.shape
    params = (temperature, top_k, top_p, seeds, positions)
    _check(logits, params, block, k_pad, tile)
    device = logits.device
    out = torch.empty(n, dtype=torch.int64, device=device)
    if n == 0:
        return out
    num_chunks = triton.cdiv(vocab, block)
    best_pv = torch.empty(n, num_chunks, dtype=torch.float32, device=device)
    chunk_max, chunk_sum = torch.empty_like(best_pv), torch.empty_like(best_pv)
    best_key = torch.empty(n, num_chunks, dtype=torch.int64, device=device)
    chunk_keys = torch.empty(n, num_chunks, k_pad, dtype=torch.int64, device=device)
    top_list = torch.empty(n, k_pad, dtype=torch.int64, device=device)
    strides = [p.stride(0) for p in params]
    common = dict(PRECISE=not interpreting(), **pdl.launch_options(device))
    _sample_split_kernel[(n, num_chunks)](
        logits, *params, best_pv, best_key, chunk_max, chunk_sum, chunk_keys,
        vocab, logits.stride(0), *strides, num_chunks,
        BLOCK=block, K_PAD=k_pad, num_warps=4 if block <= 2048 else 8, **common,
    )  # fmt: skip
    chunks_pad = triton.next_power_of_2(num_chunks)
    _sample_finish_kernel[(n,)](
        logits, *params, best_pv, best_key, chunk_max, chunk_sum, chunk_keys, top_list, out, vocab,
        logits.stride(0), *strides, num_chunks, K_PAD=k_pad, CHUNKS_PAD=chunks_pad, TILE=tile,
        num_warps=16 if chunks_pad * k_pad > 4096 else 8, **common,  # more candidates: 8 warps spill
    )  # fmt: skip
    return out


def _check(logits: torch.Tensor, params: tuple[torch.Tensor, ...], block: int, k_pad: int, tile: int) -> None:
    """Raise on what the kernels cannot do: one row of parameters per logits row, contiguous columns."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(
            f"fused_sample: logits must be (rows, vocab) with contiguous columns, got {logits.shape}"
        )
    if any(p.dim() != 1 or p.shape[0] != logits.shape[0] for p in params):
        raise ValueError(
            "fused_sample: temperature, top_k, top_p, seeds and positions need one value per row"
        )
    for name, size, least in (("block", block, 16), ("k_pad", k_pad, 2), ("tile", tile, 16)):
        if size < least or size & (size - 1):
            raise ValueError(f"fused_sample: {name} {size} must be a power of two >= {least}")
    if block < k_pad:
        raise ValueError(f"fused_sample: block {block} must hold k_pad {k_pad} keys")
