"""Log-probabilities of sampled tokens and their top alternatives, computed on the device with no sync.

A step that some row wants logprobs for (SamplingParams.logprobs) computes, for each sample row, a
log-softmax over the raw logits (before temperature, top-k and top-p, as OpenAI reports them) and a
top-k of MAX_LOGPROBS, and leaves them in `LogprobBuffers`: persistent device tensors indexed like
`last_tokens`, so graph and eager steps write them the same way and the host copies the step's prefix
with its tokens. Only the decode graph of kind "logprobs" computes them, so the greedy and sampling
graphs stay as cheap as before; prefill rows that want logprobs run eager (engine.py).

On CUDA with Triton the buffers are written by pruned_logprobs (kernels/logprobs.py: chunk-max pruning,
no (rows, vocab) log-softmax, the rows stored in place, 1024 logits per chunk at every batch size);
elsewhere (CPU, Triton absent or disabled) by compute_logprobs below, the reference the kernels are
tested against. On an H100, alone in a CUDA graph over 151,936 ids, the kernels took 18.5 us at 1 row
and 34.8 us at 64 against the torch path's 105.9 and 281.4 (float32 logits;
benchmarks/results/experiments/logprobs-ab-nvidia-h100-80gb-hbm3.json).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graphrun.llm.kernels import logprobs_ops, triton_enabled
from graphrun.llm.sampling_params import MAX_LOGPROBS


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """One sampled token's logprob and its request's top alternatives, most likely first."""

    logprob: float
    top_ids: tuple[int, ...]
    top_logprobs: tuple[float, ...]


def compute_logprobs(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, vocab) logits, (n,) sampled tokens -> (n, 1 + k) float32 [sampled, top-k...], (n, k) int64 ids."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top_values, top_ids = logp.topk(k, dim=-1)  # sorted, most likely first
    sampled = logp.gather(1, tokens.long()[:, None])
    return torch.cat([sampled, top_values], dim=1), top_ids


class LogprobBuffers:
    """The newest step's logprobs on the device, one row per row of last_tokens."""

    def __init__(self, rows: int, vocab_size: int, device: torch.device) -> None:
        self.k = min(MAX_LOGPROBS, vocab_size)
        self.values = torch.zeros(rows, 1 + self.k, dtype=torch.float32, device=device)  # (rows, 1 + k)
        self.top_ids = torch.zeros(rows, self.k, dtype=torch.int64, device=device)  # (rows, k)

    def write_prefix(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """Rows [0, n) from n rows of logits and their sampled tokens (graph-safe: no sync)."""
        n = logits.shape[0]
        if _kernels(logits):
            logprobs_ops().pruned_logprobs(logits, tokens, self.values[:n], self.top_ids[:n])
            return
        values, ids = compute_logprobs(logits, tokens, self.k)
        self.values[: values.shape[0]].copy_(values)
        self.top_ids[: ids.shape[0]].copy_(ids)

    def write_rows(self, index: torch.Tensor, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """Rows `index` (n,) from n rows of logits and their sampled tokens."""
        if _kernels(logits):
            logprobs_ops().pruned_logprobs(logits, tokens, self.values, self.top_ids, index=index)
            return
        values, ids = compute_logprobs(logits, tokens, self.k)
        self.values.index_copy_(0, index, values)
        self.top_ids.index_copy_(0, index, ids)

    def gather_to_front(self, index: torch.Tensor) -> None:
        """Move rows `index` (n,) to rows [0, n) (a mixed step's sample rows, as its tokens)."""
        values, ids = self.values.index_select(0, index), self.top_ids.index_select(0, index)
        self.values[: values.shape[0]].copy_(values)
        self.top_ids[: ids.shape[0]].copy_(ids)

    def prefix(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [0, n): the values and ids of a step's n sample rows."""
        return self.values[:n], self.top_ids[:n]


def _kernels(logits: torch.Tensor) -> bool:
    """Whether the Triton kernels write a step's rows: CUDA with Triton, logits with contiguous columns."""
    return triton_enabled(logits) and logits.stride(1) == 1


def token_logprobs(values: list[float], ids: list[int], num_top: int) -> TokenLogprobs:
    """One row read back on the host ([sampled, top-k...], top ids) -> its request's num_top alternatives."""
    return TokenLogprobs(values[0], tuple(ids[:num_top]), tuple(values[1 : 1 + num_top]))
