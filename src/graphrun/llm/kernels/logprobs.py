"""A step's logprobs (log-softmax, top-k, sampled token) by chunk-max pruning, written into its output rows.

Used by LogprobBuffers (llm/logprobs.py) on CUDA with Triton, in the decode graph of kind "logprobs" and
in eager steps; compute_logprobs there is the reference. Chosen by the GPU A/B of benchmarks/logprobs_ab.py
on an H100 (benchmarks/results/experiments/logprobs-ab-nvidia-h100-80gb-hbm3.json: logits over 151,936
ids, each variant alone in a CUDA graph) over the torch path and over an earlier writer that sorted every
chunk of every row (deleted since). With 1024 logits per chunk, against that writer at its best block and
the torch path: bf16, 20.4 us at 1 row (27.4, 111.9) and 29.2 at 64 (188.9, 310.9); float32, 18.5 at 1
row (28.8, 105.9) and 34.8 at 64 (208.5, 281.4). Block 1024 is the best or within 1 us of it at every
batch for bf16; for float32, 512 is 5 us faster at 1-4 rows only, so one block serves every batch size.

Why pruning: the earlier writer sorted every chunk of every row (tl.topk over int64 keys): at 64 rows and
2048 logits per chunk, 64 x 75 sorts, 208.5 us in float32 on that H100, where reading those 39 MB of
logits once takes ~12 us at its 3.35 TB/s. But only k chunks of a row can hold a top-k logit. Rank the
chunks by (max, then lower index): every logit of a chunk ranked k or lower is beaten by the max of each
of the k chunks ranked above it (a larger value, or an equal one at a lower id), so it is not in the top
k. And every top-k logit is >= T, the k-th largest chunk max (the k top chunks hold k logits >= T).
Three launches, no (rows, vocab) intermediate:
- stats, grid (rows, chunks): each chunk's max and sum of exp(x - max), read once, no sort;
- select, grid (rows, min(k, chunks)): program j ranks the row's chunk maxima (one tl.topk over at most
  CHUNKS_PAD keys), reloads the j-th chunk and writes its K_PAD candidate keys: the logits >= T, compacted
  by a prefix sum, when at most K_PAD are (random normal rows of 151,936 logits have at most 3 per chunk
  of 1024); else the chunk's top K_PAD by one tl.topk (many ties at T; a mask leaving fewer than k chunks
  with a finite logit, or k above the number of chunks: then T is -inf). Either way the chunk's share of
  the top k is among them;
- merge, grid (rows,): the row's log-sum-exp from the stats, its global top k from the candidate sets,
  the sampled token's raw logit; [sampled, top-k...] - lse (float32) and the top ids (int64) stored
  straight into the output rows (optionally scattered through a row index).
Passes 2 and 3 stay two launches: a row's merge needs all its select programs' candidates, and fusing
them would take a last-program-arrives atomic counter, whose ordering cannot be checked without a GPU.
On Hopper all three launch with programmatic dependent launch (kernels/pdl.py): each waits before its
first load (all it reads is earlier kernels' output) and triggers the next once its loads are issued.

Candidates travel as one int64 key per logit: the float32 value mapped to an order-preserving int32 in the
high half, (2**31 - 1 - id) in the low half. One integer top-k then sorts by value, most likely first, and
breaks exact ties by the lower id. torch.topk documents no order among equal values (on the GPU its
radix select may return any of the tied ids), so ids may differ from compute_logprobs only on exact ties.
Values are computed as torch's log_softmax does, (x - max) - log(sum(exp(x - max))); only the sum's
order differs (per chunk, then rescaled), a float rounding. A row whose logits are all -inf gives NaN in
torch; here its values are NaN too, and its ids the lowest (the tie rule).

One module, not two: the pruned kernels lived beside the earlier writer (kernels/logprobs_pruned.py)
while the A/B was open; the keys, the tie rule and the merge kernel now serve this writer alone, so they
sit with it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from graphrun.llm.kernels import pdl

K_PAD = 32  # candidates per chunk: the next power of two >= MAX_LOGPROBS (20)
DEFAULT_BLOCK = 1024  # logits per chunk: 149 chunks over 151,936 ids (the A/B's pick, module docstring)
INT64_MIN = tl.constexpr(-(2**63))  # the key of a position past the vocabulary: below every logit, -inf too
ID_BASE = tl.constexpr(2**31 - 1)  # the low half of a key is ID_BASE - id: a lower id wins a tie on value


@triton.jit
def _logit_keys(x, ids):
    """float32 values and their int32 ids -> int64 keys ordered by (value, then lower id)."""
    bits = x.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip the magnitude bits
    return (ordered.to(tl.int64) << 32) | (-ids + ID_BASE).to(tl.int64)


@triton.jit
def _key_values(keys):
    """int64 keys -> (float32 values, int64 ids): the inverse of _logit_keys."""
    ordered = (keys >> 32).to(tl.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)  # the mapping is its own inverse
    return bits.to(tl.float32, bitcast=True), -keys.to(tl.int32) + ID_BASE  # the low half, truncated


@triton.jit
def _logprobs_stats_kernel(
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
def _logprobs_select_kernel(
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


@triton.jit
def _logprobs_merge_kernel(
    logits_ptr, tokens_ptr, max_ptr, sum_ptr, keys_ptr, values_ptr, ids_ptr, index_ptr,
    stride_row, stride_values, stride_ids, num_chunks, num_sets, k,
    K_PAD: tl.constexpr, CHUNKS_PAD: tl.constexpr, SETS_PAD: tl.constexpr, HAS_INDEX: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    """One row: log-sum-exp from its chunks' (max, sum), global top k from its num_sets candidate sets of
    K_PAD keys; [sampled, top-k...] - lse and ids stored."""
    if USE_PDL:  # the stats and candidates are the earlier kernels', the sampled tokens the sampler's
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    chunks = tl.arange(0, CHUNKS_PAD)
    chunk_ok = chunks < num_chunks
    base = row * num_chunks
    chunk_max = tl.load(max_ptr + base + chunks, mask=chunk_ok, other=float("-inf"))
    chunk_sum = tl.load(sum_ptr + base + chunks, mask=chunk_ok, other=0.0)
    row_max = tl.max(chunk_max, axis=0)
    weight = tl.exp(chunk_max - row_max)  # a chunk of -inf only: 0 (its sum is 0 too)
    log_sum = tl.log(tl.sum(chunk_sum * weight, axis=0))
    slots = tl.arange(0, SETS_PAD * K_PAD)
    keys_row = keys_ptr + row * num_sets * K_PAD
    keys = tl.load(keys_row + slots, mask=slots < num_sets * K_PAD, other=INT64_MIN)
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    top_values, top_ids = _key_values(tl.topk(keys, K_PAD))
    token = tl.load(tokens_ptr + row).to(tl.int64)
    sampled = tl.load(logits_ptr + row.to(tl.int64) * stride_row + token).to(tl.float32)
    out = tl.load(index_ptr + row).to(tl.int64) if HAS_INDEX else row.to(tl.int64)
    ranks = tl.arange(0, K_PAD)
    top_ok = ranks < k
    tl.store(values_ptr + out * stride_values, (sampled - row_max) - log_sum)
    tl.store(values_ptr + out * stride_values + 1 + ranks, (top_values - row_max) - log_sum, mask=top_ok)
    tl.store(ids_ptr + out * stride_ids + ranks, top_ids, mask=top_ok)


def pruned_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    values: torch.Tensor,
    top_ids: torch.Tensor,
    index: torch.Tensor | None = None,
    block: int = DEFAULT_BLOCK,
) -> None:
    """(n, vocab) logits (float32 or bf16), (n,) sampled tokens -> rows of values (.., 1 + k) float32
    [sampled, top-k...] and top_ids (.., k) int64, as compute_logprobs gives them (k = top_ids.shape[1]).

    Row i lands in row i of the outputs, or in row index[i] when index (n,) is given. Graph-safe: three
    launches, no host sync, shapes fixed by (n, vocab, block, k). k <= K_PAD and k <= vocab; block a power
    of two >= K_PAD.
    """
    n, vocab = logits.shape
    k = top_ids.shape[1]
    check_arguments(logits, tokens, values, top_ids, block)
    num_chunks = triton.cdiv(vocab, block)
    num_sets = min(k, num_chunks)  # candidate sets per row: one per chunk that can hold a top-k logit
    chunks_pad = max(triton.next_power_of_2(num_chunks), K_PAD)  # tl.topk needs K_PAD <= its length
    options = pdl.launch_options(logits.device)
    chunk_max = torch.empty(n, num_chunks, dtype=torch.float32, device=logits.device)
    chunk_sum = torch.empty_like(chunk_max)
    keys = torch.empty(n, num_sets, K_PAD, dtype=torch.int64, device=logits.device)
    warps = 4 if block <= 2048 else 8
    _logprobs_stats_kernel[(n, num_chunks)](
        logits, chunk_max, chunk_sum, vocab, logits.stride(0), num_chunks, BLOCK=block, num_warps=warps,
        **options,
    )  # fmt: skip
    _logprobs_select_kernel[(n, num_sets)](
        logits, chunk_max, keys, vocab, logits.stride(0), num_chunks, num_sets, k,
        BLOCK=block, K_PAD=K_PAD, CHUNKS_PAD=chunks_pad, num_warps=warps, **options,
    )  # fmt: skip
    _logprobs_merge_kernel[(n,)](
        logits, tokens, chunk_max, chunk_sum, keys, values, top_ids, tokens if index is None else index,
        logits.stride(0), values.stride(0), top_ids.stride(0), num_chunks, num_sets, k,
        K_PAD=K_PAD, CHUNKS_PAD=chunks_pad, SETS_PAD=triton.next_power_of_2(num_sets),
        HAS_INDEX=index is not None, num_warps=8, **options,
    )  # fmt: skip


def check_arguments(
    logits: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor, top_ids: torch.Tensor, block: int
) -> None:
    """Raise on what the kernels cannot do: they index rows by stride and assume contiguous columns."""
    k = top_ids.shape[1]
    if not 1 <= k <= min(K_PAD, logits.shape[1]) or values.shape[1] != 1 + k:
        raise ValueError(
            f"pruned_logprobs: k={k} must be in 1..min({K_PAD}, vocab {logits.shape[1]}) and values "
            f"{tuple(values.shape)} must have 1 + k columns"
        )
    if logits.stride(1) != 1 or values.stride(1) != 1 or top_ids.stride(1) != 1:
        raise ValueError("pruned_logprobs: logits, values and top_ids need contiguous columns")
    if values.dtype != torch.float32 or top_ids.dtype != torch.int64 or tokens.shape != logits.shape[:1]:
        raise ValueError("pruned_logprobs: values float32, top_ids int64, one token per logits row")
    if block < K_PAD or block & (block - 1):
        raise ValueError(f"pruned_logprobs: block {block} must be a power of two >= {K_PAD}")


def compute_through_kernels(
    logits: torch.Tensor, tokens: torch.Tensor, k: int, block: int = DEFAULT_BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """compute_logprobs's contract through pruned_logprobs into fresh outputs: (n, 1 + k) float32 values,
    (n, k) int64 ids."""
    n = logits.shape[0]
    values = torch.empty(n, 1 + k, dtype=torch.float32, device=logits.device)
    top_ids = torch.empty(n, k, dtype=torch.int64, device=logits.device)
    pruned_logprobs(logits, tokens, values, top_ids, block=block)
    return values, top_ids
