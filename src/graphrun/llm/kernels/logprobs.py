"""Fused logprobs: a step's log-softmax and top-k in two Triton launches, written into its output rows.

Used by LogprobBuffers (llm/logprobs.py) on CUDA with Triton, in the decode graph of kind "logprobs" and
in eager steps; compute_logprobs there is the reference. Decided by the GPU A/B of benchmarks/logprobs_ab.py
on an H200 (benchmarks/results/logprobs-ab-nvidia-h200.json): 0.30x the torch path's time at 1 row, 0.59x
at 16, 0.88x at 64 (float32 logits; kernels.logprobs_block picks the chunk size per row count).

Why: the torch path writes the whole (rows, vocab) float32 log-softmax, then runs torch's radix-select
top-k on it (several kernels, slow for a few long rows), a gather, a cat and two copies into the buffers.
Here:
- the split kernel, grid (rows, vocab chunks), reads its chunk of the raw logits once and writes the
  chunk's max, its sum of exp(x - max), and its top K_PAD candidates;
- the merge kernel, grid (rows,), combines the chunks into the row's log-sum-exp and its global top k,
  loads the sampled token's raw logit, and stores [sampled, top-k...] - lse (float32) and the top ids
  (int64) straight into the output rows (optionally scattered through a row index).
No (rows, vocab) intermediate; the partials are (rows, chunks) and (rows, chunks, K_PAD).
On Hopper both launch with programmatic dependent launch (kernels/pdl.py): each waits before its first
load (all it reads is earlier kernels' output) and lets the next kernel launch once its loads are issued.

Candidates travel as one int64 key per logit: the float32 value mapped to an order-preserving int32 in the
high half, (2**31 - 1 - id) in the low half. One integer top-k then sorts by value, most likely first, and
breaks exact ties by the lower id. torch.topk documents no order among equal values (on the GPU its
radix select may return any of the tied ids), so ids may differ from compute_logprobs only on exact ties.
Values are computed as torch's log_softmax does, (x - max) - log(sum(exp(x - max))); only the sum's
order differs (per chunk, then rescaled), a float rounding. A row whose logits are all -inf gives NaN in
torch; here its values are NaN too, and its ids unspecified.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from graphrun.llm.kernels import pdl

K_PAD = 32  # candidates per chunk: the next power of two >= MAX_LOGPROBS (20)
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
def _logprobs_split_kernel(
    logits_ptr, max_ptr, sum_ptr, keys_ptr, vocab, stride_row, num_chunks,
    BLOCK: tl.constexpr, K_PAD: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """One (row, chunk of BLOCK logits): the chunk's max, sum of exp(x - max) and top K_PAD keys."""
    if USE_PDL:  # the logits are the LM head's output (kernels/pdl.py)
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    ids = chunk * BLOCK + tl.arange(0, BLOCK)
    ok = ids < vocab
    x = tl.load(logits_ptr + row.to(tl.int64) * stride_row + ids, mask=ok, other=float("-inf"))
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    x = x.to(tl.float32)
    x_max = tl.max(x, axis=0)
    shift = tl.where(x_max == float("-inf"), 0.0, x_max)  # a chunk of -inf only sums to 0, not NaN
    x_sum = tl.sum(tl.exp(x - shift), axis=0)
    keys = tl.where(ok, _logit_keys(x, ids), INT64_MIN)
    part = row * num_chunks + chunk
    tl.store(max_ptr + part, x_max)
    tl.store(sum_ptr + part, x_sum)
    tl.store(keys_ptr + part * K_PAD + tl.arange(0, K_PAD), tl.topk(keys, K_PAD))


@triton.jit
def _logprobs_merge_kernel(
    logits_ptr, tokens_ptr, max_ptr, sum_ptr, keys_ptr, values_ptr, ids_ptr, index_ptr,
    stride_row, stride_values, stride_ids, num_chunks, num_sets, k,
    K_PAD: tl.constexpr, CHUNKS_PAD: tl.constexpr, SETS_PAD: tl.constexpr, HAS_INDEX: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    """One row: log-sum-exp from its chunks' (max, sum), global top k from its num_sets candidate sets of
    K_PAD keys (a set per chunk here; kernels/logprobs_pruned.py passes fewer); [sampled, top-k...] - lse
    and ids stored."""
    if USE_PDL:  # the chunks are the split kernel's, the sampled tokens the sampler's
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


DEFAULT_BLOCK = 2048  # logits per split program: 75 chunks over a 151,936-token vocabulary (unmeasured)


def fused_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    values: torch.Tensor,
    top_ids: torch.Tensor,
    index: torch.Tensor | None = None,
    block: int = DEFAULT_BLOCK,
) -> None:
    """(n, vocab) logits (float32 or bf16), (n,) sampled tokens -> rows of values (.., 1 + k) float32
    [sampled, top-k...] and top_ids (.., k) int64, as compute_logprobs gives them (k = top_ids.shape[1]).

    Row i lands in row i of the outputs, or in row index[i] when index (n,) is given. Graph-safe: two
    launches, no host sync, shapes fixed by (n, vocab, block). k <= K_PAD and k <= vocab.
    """
    n, vocab = logits.shape
    k = top_ids.shape[1]
    check_arguments(logits, tokens, values, top_ids, block)
    num_chunks = triton.cdiv(vocab, block)
    chunks_pad = triton.next_power_of_2(num_chunks)
    options = pdl.launch_options(logits.device)
    chunk_max = torch.empty(n, num_chunks, dtype=torch.float32, device=logits.device)
    chunk_sum = torch.empty_like(chunk_max)
    chunk_keys = torch.empty(n, num_chunks, K_PAD, dtype=torch.int64, device=logits.device)
    _logprobs_split_kernel[(n, num_chunks)](
        logits, chunk_max, chunk_sum, chunk_keys, vocab, logits.stride(0), num_chunks,
        BLOCK=block, K_PAD=K_PAD, num_warps=4 if block <= 2048 else 8, **options,
    )  # fmt: skip
    _logprobs_merge_kernel[(n,)](
        logits, tokens, chunk_max, chunk_sum, chunk_keys, values, top_ids, tokens if index is None else index,
        logits.stride(0), values.stride(0), top_ids.stride(0), num_chunks, num_chunks, k,
        K_PAD=K_PAD, CHUNKS_PAD=chunks_pad, SETS_PAD=chunks_pad,
        HAS_INDEX=index is not None, num_warps=8, **options,
    )  # fmt: skip


def check_arguments(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    values: torch.Tensor,
    top_ids: torch.Tensor,
    block: int,
    name: str = "fused_logprobs",
) -> None:
    """Raise on what the kernels cannot do: they index rows by stride and assume contiguous columns."""
    k = top_ids.shape[1]
    if not 1 <= k <= min(K_PAD, logits.shape[1]) or values.shape[1] != 1 + k:
        raise ValueError(
            f"{name}: k={k} must be in 1..min({K_PAD}, vocab {logits.shape[1]}) and values "
            f"{tuple(values.shape)} must have 1 + k columns"
        )
    if logits.stride(1) != 1 or values.stride(1) != 1 or top_ids.stride(1) != 1:
        raise ValueError(f"{name}: logits, values and top_ids need contiguous columns")
    if values.dtype != torch.float32 or top_ids.dtype != torch.int64 or tokens.shape != logits.shape[:1]:
        raise ValueError(f"{name}: values float32, top_ids int64, one token per logits row")
    if block < K_PAD or block & (block - 1):
        raise ValueError(f"{name}: block {block} must be a power of two >= {K_PAD}")


def compute_through(
    write: Callable[..., None], logits: torch.Tensor, tokens: torch.Tensor, k: int, **options: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """compute_logprobs's contract through a writer of this contract (fused_logprobs, or pruned_logprobs of
    kernels/logprobs_pruned.py) into fresh outputs: (n, 1 + k) float32, (n, k) int64. `options` (block)
    go to the writer."""
    n = logits.shape[0]
    values = torch.empty(n, 1 + k, dtype=torch.float32, device=logits.device)
    top_ids = torch.empty(n, k, dtype=torch.int64, device=logits.device)
    write(logits, tokens, values, top_ids, **options)
    return values, top_ids
