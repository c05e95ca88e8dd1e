"""The sampler's randomness: a counter-based hash of (seed, position, token id) -> uniform (0, 1).

Deterministic and graph-safe (no RNG state): the same seed and prompt give the same noise whatever else
is in the batch. llm/sampler.py turns it into Gumbel noise; kernels/sampling_keys.py computes the same
hash in 32-bit wrapping arithmetic inside the fused sampling kernels, so both must change together.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
# odd multipliers below 2**31, so a 32-bit value times one stays below 2**63 in int64 arithmetic
NOISE_MIX = (0x7FEB352D, 0x2C1B3C6D, 0x297A2D39, 0x5851F42D)


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
