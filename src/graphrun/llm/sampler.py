"""Token sampling inside the captured decode graph: no host sync, no global RNG, per-request seeds.

Greedy, temperature, top-k and top-p are computed for every row with tensor ops only, so one graph
serves any mix of requests. Randomness comes from a counter-based hash of (seed, position, token id),
turned into Gumbel noise: the same seed and prompt give the same tokens whatever else is in the batch,
and replaying a graph needs no RNG state. Greedy-only batches use `greedy_sample`, a cheaper graph.

`sample` is the one entry: on CUDA with Triton it runs kernels/sampling.py's `fused_sample`, the same
tokens as `sort_sample` without sorting (two launches; the reasoning is in its docstring); elsewhere
`sort_sample`, the reference: it sorts every row's whole vocabulary. Measured side by side in a CUDA
graph at Qwen3's 151,936 ids (benchmarks/sampler_ab.py, H100,
benchmarks/results/experiments/sampler-ab-noise-bug-nvidia-h100-80gb-hbm3.json): top-k 50 + top-p 0.9 over
LLM-like peaked rows 40 us against 225 at batch 1 and 205 against 2526 at batch 64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graphrun.llm.kernels import sampling_block, sampling_ops, triton_enabled
from graphrun.llm.noise import uniform_noise


@dataclass(slots=True)
class SamplingTensors:
    """Per-row sampling parameters as static tensors (each (num_seqs,))."""

    temperature: torch.Tensor  # float32, 0 = greedy
    top_k: torch.Tensor  # int32, 0 = off
    top_p: torch.Tensor  # float32, >= 1 = off
    seeds: torch.Tensor  # int64


def greedy_sample(logits: torch.Tensor) -> torch.Tensor:
    """(num_seqs, vocab) -> (num_seqs,) int64: the most likely token."""
    return logits.argmax(dim=-1)


def sample(logits: torch.Tensor, params: SamplingTensors, positions: torch.Tensor) -> torch.Tensor:
    """(num_seqs, vocab) float logits -> (num_seqs,) int64 tokens; rows with temperature 0 are greedy.
    Graph-safe; the fused kernels on CUDA, else sort_sample (the same tokens, see the module docstring)."""
    if logits.dim() == 2 and logits.stride(1) == 1 and triton_enabled(logits):
        return sampling_ops().fused_sample(
            logits, params.temperature, params.top_k, params.top_p, params.seeds, positions,
            block=sampling_block(logits.shape[0]),
        )  # fmt: skip
    return sort_sample(logits, params, positions)


def sort_sample(logits: torch.Tensor, params: SamplingTensors, positions: torch.Tensor) -> torch.Tensor:
    """The reference sampler (torch ops): `sample`'s tokens by sorting every row's vocabulary.

    Exact over the whole vocabulary: sort once, mask past top-k and outside the top-p nucleus (the most
    likely token always stays), then Gumbel-max with the hashed noise. The order is a total one: by
    value, equal values by lower id (a stable sort; torch documents no order among ties otherwise), so
    kernels/sampling.py can give the same tokens without sorting. top_p >= 1 cuts nothing (a float32
    cumsum may round past 1 in the tail).
    """
    logits = logits.float()
    vocab = logits.shape[-1]
    greedy = logits.argmax(dim=-1)
    temperature = params.temperature.clamp(min=1e-5)[:, None]
    sorted_logits, sorted_ids = (logits / temperature).sort(
        dim=-1, descending=True, stable=True
    )  # (num_seqs, vocab)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    k = torch.where(params.top_k > 0, params.top_k, vocab).clamp(max=vocab)[:, None]
    sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass strictly above each token
    top_p = params.top_p[:, None]
    sorted_logits = sorted_logits.masked_fill((before > top_p) & (ranks > 0) & (top_p < 1), float("-inf"))
    gumbel = -torch.log(-torch.log(uniform_noise(params.seeds, positions, sorted_ids)))
    choice = (sorted_logits + gumbel).argmax(dim=-1, keepdim=True)
    sampled = sorted_ids.gather(1, choice).squeeze(1)
    return torch.where(params.temperature > 0, sampled, greedy)
