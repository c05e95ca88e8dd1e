"""Token sampling inside the captured decode graph: no host sync, no global RNG, per-request seeds.

Greedy, temperature, top-k and top-p are computed for every row with tensor ops only, so one graph
serves any mix of requests. Randomness comes from a counter-based hash of (seed, position, token id),
turned into Gumbel noise: the same seed and prompt give the same tokens whatever else is in the batch,
and replaying a graph needs no RNG state. Greedy-only batches use `greedy_sample`, a cheaper graph.

`sample` sorts every row's whole vocabulary. kernels/sampling.py gives the same tokens without sorting
(two launches; the reasoning is in its docstring) and is tested against `sample`; it has not run on a
GPU, so `sample` stays the one path until benchmarks/sampler_ab.py has measured it there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASK32 = 0xFFFFFFFF
# odd multipliers below 2**31, so a 32-bit value times one stays below 2**63 in int64 arithmetic
NOISE_MIX = (0x7FEB352D, 0x2C1B3C6D, 0x297A2D39, 0x5851F42D)


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


def uniform_noise(seeds: torch.Tensor, positions: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform (0, 1) numbers keyed by (seed, position, token id): deterministic, graph-safe.

    seeds, positions: (num_seqs,); token_ids: (num_seqs, k) -> (num_seqs, k) float32.
    """
    x = (seeds[:, None] & 0x7FFFFFFF) * NOISE_MIX[0] + (positions[:, None].long() & 0x7FFFFFFF) * NOISE_MIX[1]
    x = (x + token_ids.long() * NOISE_MIX[2]) & MASK32
    for mult in (NOISE_MIX[3], NOISE_MIX[0]):  # xorshift-multiply rounds (a 32-bit finaliser)
        x = x ^ (x >> 16)
        x = (x * mult) & MASK32
    x = x ^ (x >> 15)
    # 23 bits: u <= 1 - 2**-24, strictly inside (0, 1) in float32, so the Gumbel noise is finite. (With 24
    # bits the largest hash rounded to 1.0: infinite noise, which beat top-k / top-p's -inf mask as NaN.)
    return ((x >> 9).float() + 0.5) * (1.0 / (1 << 23))


def sample(logits: torch.Tensor, params: SamplingTensors, positions: torch.Tensor) -> torch.Tensor:
    """(num_seqs, vocab) float logits -> (num_seqs,) int64 tokens; rows with temperature 0 are greedy.

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
