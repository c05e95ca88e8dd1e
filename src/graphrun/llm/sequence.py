"""One request's state as it moves through the scheduler: tokens, KV blocks, progress, outcome.

Progress is one number, `num_computed_tokens` (tokens whose K/V are in the cache). Everything else
follows from it: a sequence with more than one uncomputed token still needs prefill; one with exactly
one (the token sampled last step, or the last prompt token) is ready to decode. Preemption resets it to
0, so the prompt *and* the tokens generated so far are recomputed as one prefill; the generated tokens
are kept, so a preempted request never loses output and seeded sampling stays reproducible.
"""

from __future__ import annotations

import enum
import time
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Literal

from graphrun.llm.logprobs import TokenLogprobs
from graphrun.llm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from graphrun.llm.grammar import GrammarMatcher

FinishReason = Literal["stop", "length", "abort"]

_MASK64 = (1 << 64) - 1


class SequenceStatus(enum.Enum):
    """Where a sequence is: queued (or preempted), admitted with KV blocks, or done."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


def derive_seed(seq_id: int, base_seed: int = 0) -> int:
    """A well-mixed seed in [0, 2**63) from a request counter (splitmix64), for requests without one.

    Neighbouring ids give unrelated seeds, so requests with seed=None sample independently, and a run
    with the same base_seed and arrival order is reproducible.
    """
    x = (seq_id + base_seed * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 1  # 63 bits: fits an int64 tensor


@dataclass(slots=True, eq=False)
class Sequence:
    """A request: its prompt, generated tokens, KV blocks and scheduling state (mutated by the scheduler).

    Identity semantics (eq=False): two sequences are the same only if they are the same object.
    """

    seq_id: int
    prompt_token_ids: list[int]
    params: SamplingParams
    base_seed: InitVar[int] = 0  # engine-wide seed mixed into derived per-request seeds
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    block_ids: list[int] = field(default_factory=list)  # cache blocks holding positions 0, bs, 2*bs, ...
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_preemptions: int = 0
    arrival: int = -1  # order of arrival, set by Scheduler.add
    arrival_time: float = field(default_factory=time.monotonic)  # for latency metrics
    rng_seed: int = field(init=False)  # the in-graph sampler's seed: params.seed, or derived from seq_id
    # prefix caching (prefix_cache.py): the keys of the prompt's full blocks, computed once when needed,
    # and how many prompt tokens the cache held at admission (usage's cached_tokens)
    prefix_keys: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    num_cached_tokens: int = 0
    # params.prompt_logprobs: the logprobs of prompt tokens 1, 2, ... as prefill chunks compute them
    prompt_logprobs: list[TokenLogprobs] = field(default_factory=list)
    # params.structured_output: the matcher that has taken every resolved output token (grammar.py)
    grammar: GrammarMatcher | None = None

    def __post_init__(self, base_seed: int) -> None:
        self.prompt_token_ids = list(self.prompt_token_ids)
        seed = self.params.seed
        self.rng_seed = derive_seed(self.seq_id, base_seed) if seed is None else seed

    @property
    def num_prompt_tokens(self) -> int:
        """Tokens in the prompt."""
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        """Prompt plus generated tokens, as a new list."""
        return self.prompt_token_ids + self.output_token_ids

    @property
    def last_token_id(self) -> int:
        """The newest token: the one a decode step feeds to the model."""
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens whose K/V are not yet in the cache (remaining prefill, or 1 when ready to decode)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_prefilling(self) -> bool:
        """More than one token still to compute: the next step for it is a prefill chunk."""
        return self.num_uncomputed_tokens > 1

    @property
    def is_finished(self) -> bool:
        """Done: stopped, hit a length limit, or aborted."""
        return self.status is SequenceStatus.FINISHED

    def token_ids(self, start: int, end: int) -> list[int]:
        """Tokens at positions [start, end) of prompt + output, without building the whole list."""
        num_prompt = len(self.prompt_token_ids)
        if end <= num_prompt:
            return self.prompt_token_ids[start:end]
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt : end - num_prompt]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - num_prompt]
