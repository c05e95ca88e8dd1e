"""Prompt logprobs (OpenAI's echo with logprobs): every prompt token's logprob but the first's.

The logits at position p score the token at p + 1, so a prefill chunk over positions [first, first + m)
gives the logprobs of prompt tokens first + 1 ... first + m (within the prompt). They are computed
eagerly from the step's hidden states (so such prompts never replay a prefill graph, whose LM head sees
only the last token, and take no prefix-cache hit, whose tokens have no hidden states) and read back at
once into `Sequence.prompt_logprobs`: a host sync per chunk, paid only by the steps that carry one.
A recomputed (preempted) prompt finds them there and adds none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from graphrun.llm.logprobs import TokenLogprobs, compute_logprobs
from graphrun.llm.scheduler import ScheduledBatch
from graphrun.llm.sequence import Sequence


def wants_prompt_logprobs(seqs: list[Sequence]) -> bool:
    """Whether some sequence of a step still needs prompt logprobs."""
    return any(
        s.params.prompt_logprobs is not None and len(s.prompt_logprobs) < s.num_prompt_tokens - 1
        for s in seqs
    )


def record_prompt_logprobs(
    batch: ScheduledBatch, hidden: torch.Tensor, compute_logits: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Append to each sequence that asks the logprobs of the prompt tokens this step's chunk scores.

    hidden: (num_tokens, hidden_size), the step's tokens in batch order.
    """
    starts = batch.query_start
    for row, seq in enumerate(batch.seqs):
        num_top = seq.params.prompt_logprobs
        if num_top is None:
            continue
        a, b = starts[row], starts[row + 1]
        first = batch.positions[a]
        lo = max(first, len(seq.prompt_logprobs))  # the position scoring the first token still missing
        hi = min(first + (b - a), seq.num_prompt_tokens - 1)
        if lo >= hi:
            continue
        logits = compute_logits(hidden[a + lo - first : a + hi - first])  # (hi - lo, vocab)
        targets = torch.tensor(seq.prompt_token_ids[lo + 1 : hi + 1], device=hidden.device)
        values, ids = compute_logprobs(logits, targets, min(num_top, logits.shape[-1]))
        for v, i in zip(values.tolist(), ids.tolist(), strict=True):
            seq.prompt_logprobs.append(TokenLogprobs(v[0], tuple(i), tuple(v[1:])))
