"""Chunk-max pruned logprobs: fused_logprobs's contract, the top-k work done on k chunks of a row, not all.

Candidate for LogprobBuffers' writer, to be chosen by the GPU A/B of benchmarks/logprobs_ab.py (variants
pruned_B); unmeasured, and not used by the engine until that A/B decides.

Why: kernels/logprobs.py's split kernel sorts every chunk of every row (tl.topk over int64 keys): at 64
rows of a 151,936-token vocabulary that is 64 x 75 sorts of 2048 keys, ~208 us on an H200, while reading
the logits once takes ~10 us. But only k chunks of a row can hold a top-k logit. Rank the chunks by
(max, then lower index): every logit of a chunk ranked k or lower is beaten by the max of each of the k
chunks ranked above it (a larger value, or an equal one at a lower id), so it is not in the top k. And
every top-k logit is >= T, the k-th largest chunk max (the k top chunks hold k logits >= T).
Three launches, no (rows, vocab) intermediate:
- stats, grid (rows, chunks): each chunk's max and sum of exp(x - max), read once, no sort;
- select, grid (rows, min(k, chunks)): program j ranks the row's chunk maxima (one tl.topk over at most
  CHUNKS_PAD keys), reloads the j-th chunk and writes its K_PAD candidate keys: the logits >= T, compacted
  by a prefix sum, when at most K_PAD are (random normal rows of 151,936 logits have at most 3 per chunk
  of 1024); else the chunk's top K_PAD by one tl.topk (many ties at T; a mask leaving fewer than k chunks
  with a finite logit, or k above the number of chunks: then T is -inf). Either way the chunk's share of
  the top k is among them;
- merge, grid (rows,): kernels/logprobs.py's merge kernel over those min(k, chunks) candidate sets: the
  log-sum-exp from the stats, the global top k, the rows written (index scatter too).
Keys, tie rule (equal values: lower id first), rounding and the NaN of an all -inf row are the fused
kernels' (kernels/logprobs.py). Passes 2 and 3 stay two launches: a row's merge needs all its select
programs' candidates, and fusing them would take a last-program-arrives atomic counter, whose ordering
cannot be checked without a GPU. On Hopper all three launch with programmatic dependent launch
(kernels/pdl.py): each waits before its first load and triggers the next once its loads are issued.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from graphrun.llm.kernels import pdl
from graphrun.llm.kernels.logprobs import (
    INT64_MIN,
    K_PAD,
    _key_values,
    _logit_keys,
    _logprobs_merge_kernel,
    check_arguments,
)

DEFAULT_BLOCK = 1024  # logits per chunk: 149 chunks over a 151,936-token vocabulary (unmeasured)


@triton.jit
def _pruned_stats_kernel(
    logits_ptr, max_ptr, sum_ptr, vocab, stride_row, num_chunks, BLOCK: tl.constexpr, USE_PDL: tl.constexpr
):  # fmt: skip
    """One (row, chunk of BLOCK logits): the chunk's max and its sum of exp(x - max)."""
    if USE_PDL:  # the logits are the LM head's output (kernels/pdl.py)
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    ids = chunk * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(logits_ptr + row.to(tl.int64) * stride_row + ids, mask=ids < vocab, other=float("-inf"))
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    x = x.to(tl.float32)
    x_max = tl.max(x, axis=0)
    shift = tl.where(x_max == float("-inf"), 0.0, x_max)  # a chunk of -inf only sums to 0, not NaN
    tl.store(max_ptr + row * num_chunks + chunk, x_max)
    tl.store(sum_ptr + row * num_chunks + chunk, tl.sum(tl.exp(x - shift), axis=0))


@triton.jit
def _ranked_chunk(max_ptr, row, rank, num_chunks, k, CHUNKS_PAD: tl.constexpr, K_PAD: tl.constexpr):
    """The row's chunk of this rank by (max, then lower index), and T: the k-th largest chunk max, or -inf
    when the row has fewer than k chunks. rank < min(k, num_chunks) <= K_PAD."""
    chunks = tl.arange(0, CHUNKS_PAD)
    chunk_ok = chunks < num_chunks
    chunk_max = tl.load(max_ptr + row * num_chunks + chunks, mask=chunk_ok, other=float("-inf"))
    ranked = tl.topk(tl.where(chunk_ok, _logit_keys(chunk_max, chunks), INT64_MIN), K_PAD)
    ranks = tl.arange(0, K_PAD)
    _, chunk = _key_values(tl.max(tl.where(ranks == rank, ranked, INT64_MIN), axis=0))
    kth_max, _ = _key_values(tl.max(tl.where(ranks == k - 1, ranked, INT64_MIN), axis=0))
    return chunk, tl.where(k <= num_chunks, kth_max, float("-inf"))


@triton.jit
def _pruned_select_kernel(
    logits_ptr, max_ptr, keys_ptr, vocab, stride_row, num_chunks, num_sets, k,
    BLOCK: tl.constexpr, K_PAD: tl.constexpr, CHUNKS_PAD: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """One (row, rank j < num_sets): the K_PAD candidate keys of the row's j-th chunk (INT64_MIN padded)."""
    if USE_PDL:  # the maxima are the stats kernel's, the logits the LM head's
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    rank = tl.program_id(1)
    chunk, threshold = _ranked_chunk(max_ptr, row, rank, num_chunks, k, CHUNKS_PAD, K_PAD)
    ids = chunk * BLOCK + tl.arange(0, BLOCK)
    ok = ids < vocab
    x = tl.load(logits_ptr + row.to(tl.int64) * stride_row + ids, mask=ok, other=float("-inf"))
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    x = x.to(tl.float32)
    keys = tl.where(ok, _logit_keys(x, ids), INT64_MIN)
    out = keys_ptr + (row * num_sets + rank) * K_PAD
    keep = ok & (x >= threshold)  # every top-k logit of this chunk is >= T
    count = tl.sum(keep.to(tl.int32), axis=0)
    slots = tl.arange(0, K_PAD)
    if count <= K_PAD:  # compact the kept keys into slots [0, count), pad the rest: no sort
        tl.store(out + tl.cumsum(keep.to(tl.int32), axis=0) - 1, keys, mask=keep)
        tl.store(out + slots, tl.full([K_PAD], INT64_MIN, tl.int64), mask=slots >= count)
    else:  # too many >= T: the chunk's top K_PAD holds its share of the top k (k <= K_PAD)
        tl.store(out + slots, tl.topk(keys, K_PAD))


def pruned_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    values: torch.Tensor,
    top_ids: torch.Tensor,
    index: torch.Tensor | None = None,
    block: int = DEFAULT_BLOCK,
) -> None:
    """fused_logprobs (kernels/logprobs.py) through chunk-max pruning: same arguments, same rows written.

    (n, vocab) logits (float32 or bf16), (n,) sampled tokens -> values (.., 1 + k) float32 [sampled,
    top-k...] and top_ids (.., k) int64, row i into row i or index[i]. Graph-safe: three launches, no host
    sync, shapes fixed by (n, vocab, block, k). k <= K_PAD and k <= vocab; block a power of two >= K_PAD.
    """
    n, vocab = logits.shape
    k = top_ids.shape[1]
    check_arguments(logits, tokens, values, top_ids, block, name="pruned_logprobs")
    num_chunks = triton.cdiv(vocab, block)
    num_sets = min(k, num_chunks)  # candidate sets per row: one per chunk that can hold a top-k logit
    chunks_pad = max(triton.next_power_of_2(num_chunks), K_PAD)  # tl.topk needs K_PAD <= its length
    options = pdl.launch_options(logits.device)
    chunk_max = torch.empty(n, num_chunks, dtype=torch.float32, device=logits.device)
    chunk_sum = torch.empty_like(chunk_max)
    keys = torch.empty(n, num_sets, K_PAD, dtype=torch.int64, device=logits.device)
    warps = 4 if block <= 2048 else 8
    _pruned_stats_kernel[(n, num_chunks)](
        logits, chunk_max, chunk_sum, vocab, logits.stride(0), num_chunks, BLOCK=block, num_warps=warps,
        **options,
    )  # fmt: skip
    _pruned_select_kernel[(n, num_sets)](
        logits, chunk_max, keys, vocab, logits.stride(0), num_chunks, num_sets, k,
        BLOCK=block, K_PAD=K_PAD, CHUNKS_PAD=chunks_pad, num_warps=warps, **options,
    )  # fmt: skip
    _logprobs_merge_kernel[(n,)](
        logits, tokens, chunk_max, chunk_sum, keys, values, top_ids, tokens if index is None else index,
        logits.stride(0), values.stride(0), top_ids.stride(0), num_chunks, num_sets, k,
        K_PAD=K_PAD, CHUNKS_PAD=chunks_pad, SETS_PAD=triton.next_power_of_2(num_sets),
        HAS_INDEX=index is not None, num_warps=8, **options,
    )  # fmt: skip
