"""Several choices of one prompt (OpenAI's `n`): one prefill, then forks that share the prompt's cache.

Why: n separate requests would prefill the same prompt n times and hold n copies of its KV blocks. A
`ChoiceGroup` queues only its first choice; the others wait, holding no blocks, until that choice's
prompt is in the cache. Then (Scheduler.advance) each of them forks from it: the blocks the prompt
fills completely are shared (reference-counted, block_manager.py), the partly filled last block is
copied on the device, and the fork's cache ends one token short of the prompt so that its first step
is a decode of the last prompt token that samples with the choice's own seed. Choice j samples exactly
as a separate request with seed `seed + j` would (the sampler's randomness depends on the seed and the
position only); with no seed, each choice derives its own from its sequence id.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.sequence import Sequence


@dataclass(slots=True, eq=False)
class ChoiceGroup:
    """The choices of one prompt until they fork: `first` prefills, `waiting` hold no blocks yet."""

    first: Sequence
    waiting: list[Sequence]

    @property
    def num_seats(self) -> int:
        """Running slots the group takes once forked (its choices decode side by side)."""
        return 1 + len(self.waiting)


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice `index`'s parameters: the request's, with seed + index when it has a seed (a seed past 64
    bits raises SamplingParamsError naming `seed`)."""
    if params.seed is None or index == 0:
        return params
    return replace(params, seed=params.seed + index)
