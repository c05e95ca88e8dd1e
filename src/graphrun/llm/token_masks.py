"""Token bitmasks for structured output: filled on the host per step, applied to the logits on the device.

A mask row is ceil(vocab / 32) int32 words; bit t % 32 of word t // 32 allows token t. `TokenMasks` owns
one persistent device tensor (rows like `last_tokens`: one per token row of the largest step), which the
decode graphs of the mask kinds (decode_step.py) read as one more static input, and pinned host twins the
engine fills each step (a grammar request's sample row from its matcher, every other row all ones) and
copies in one asynchronous transfer before the step's sampling runs (its forward is already queued). Two
host sets are used in turn, as HostStaging's are.
Batches with no grammar row never touch any of it and replay the plain graphs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from graphrun.llm.grammar import GrammarMatcher

ALL_ALLOWED = -1  # an int32 with every bit set


def num_words(vocab_size: int) -> int:
    """int32 words per mask row of a vocabulary."""
    return (vocab_size + 31) // 32


def apply_token_masks(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(n, vocab) logits, (n, words) int32 masks -> the logits with forbidden tokens at -inf (graph-safe).

    The words are read as bytes (little-endian, as on every device torch runs on: byte t // 8 holds token
    t at bit t % 8), each byte and-ed with the 8 one-bit patterns: one (n, words * 32) uint8 tensor, then
    its bool view of the vocabulary and a select. An (n, words, 32) int32 expansion wrote four bytes a
    token, twice, before its bool pass (benchmarks/token_mask_apply.py measures both).
    """
    n, vocab = logits.shape
    data = masks[:n].view(torch.uint8)  # (n, words * 4)
    device = logits.device
    one_bits = torch.ones(8, dtype=torch.uint8, device=device) << torch.arange(
        8, dtype=torch.uint8, device=device
    )
    allowed = (data[:, :, None] & one_bits).view(n, -1)[:, :vocab].bool()  # (n, vocab)
    return torch.where(allowed, logits, float("-inf"))


class TokenMasks:
    """The device mask rows and their host staging (see the module docstring)."""

    def __init__(self, rows: int, vocab_size: int, device: torch.device) -> None:
        words = num_words(vocab_size)
        self.device_masks = torch.full((rows, words), ALL_ALLOWED, dtype=torch.int32, device=device)
        pinned = device.type == "cuda"
        self._host = [
            torch.full((rows, words), ALL_ALLOWED, dtype=torch.int32, pin_memory=pinned) for _ in "ab"
        ]
        self._turn = 0
        self._non_blocking = pinned

    def fill(self, num_rows: int, rows: Iterable[tuple[int, GrammarMatcher]]) -> torch.Tensor:
        """Stage the next step's num_rows mask rows (row i from its matcher, the rest all allowed), queue
        their copy to the device; returns the device rows [:num_rows] (what the step reads)."""
        host = self._host[self._turn]
        self._turn ^= 1
        staged = host[:num_rows]
        array = staged.numpy()
        array.fill(ALL_ALLOWED)
        for row, matcher in rows:
            matcher.fill(array[row])
        target = self.device_masks[:num_rows]
        target.copy_(staged, non_blocking=self._non_blocking)
        return target
