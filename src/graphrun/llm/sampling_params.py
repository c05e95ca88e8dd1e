"""What a request asks of the sampler and when it stops: one frozen, validated value per request.

Validated here, once, so the scheduler and the in-graph sampler never see a bad value; the HTTP layer
maps `SamplingParamsError` to a 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphrun.errors import ConfigError
from graphrun.llm.structured_output import StructuredOutput

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # seeds travel to the sampler in an int64 tensor


class SamplingParamsError(ConfigError):
    """A sampling parameter is out of range (temperature < 0, top_p outside (0, 1], ...); `param` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.param))  # pickled to the server process with its param


MAX_LOGPROBS = 20  # OpenAI's limit on top_logprobs (and on completions' logprobs)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling and stopping settings of one request.

    temperature 0 means greedy; top_k 0 and top_p 1.0 mean off. seed None means the sequence gets a seed
    derived from its id (see `Sequence.rng_seed`), so sampling is reproducible per request either way.
    ignore_eos keeps generating past the model's end-of-sequence tokens (benchmarks); stop_token_ids stop
    the request even then. logprobs k (0..20) returns each sampled token's logprob and the k most likely
    tokens' (logprobs.py); prompt_logprobs k the same for every prompt token but the first (computed
    eagerly at prefill, with no prefix-cache hit). structured_output constrains the output to a JSON
    schema, a regex, a choice or a grammar (grammar.py); the request stops ("stop") when it is complete.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k: the sampled token's logprob and the k most likely
    prompt_logprobs: int | None = None  # None: none; k: each prompt token's (but the first) and k more
    structured_output: StructuredOutput | None = None  # None: free text

    def __post_init__(self) -> None:
        if not self.temperature >= 0:  # also rejects NaN
            raise SamplingParamsError(
                f"temperature must be >= 0 (0 = greedy), got {self.temperature}", "temperature"
            )
        if not 0 < self.top_p <= 1:
            raise SamplingParamsError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}", "top_p")
        _check_int("top_k", self.top_k, 0, "0 = off")
        _check_int("max_tokens", self.max_tokens, 1, "the number of tokens to generate")
        if self.seed is not None:
            _check_int("seed", self.seed, INT64_MIN, "a 64-bit integer")
            if self.seed > INT64_MAX:
                raise SamplingParamsError(
                    f"seed must fit in 64 bits (<= {INT64_MAX}), got {self.seed}", "seed"
                )
        for name in ("logprobs", "prompt_logprobs"):
            _check_logprobs(name, getattr(self, name))
        if not isinstance(self.stop_token_ids, tuple):
            raise SamplingParamsError(
                f"stop_token_ids must be a tuple of ints, got {type(self.stop_token_ids).__name__}; "
                "pass tuple(ids)",
                "stop_token_ids",
            )
        if self.structured_output is not None and not isinstance(self.structured_output, StructuredOutput):
            raise SamplingParamsError(
                f"structured_output must be a StructuredOutput, got {type(self.structured_output).__name__}",
                "structured_output",
            )
        bad = [t for t in self.stop_token_ids if isinstance(t, bool) or not isinstance(t, int) or t < 0]
        if bad:
            raise SamplingParamsError(
                f"stop_token_ids must be non-negative token ids, got {bad}", "stop_token_ids"
            )

    @property
    def is_greedy(self) -> bool:
        """True when sampling reduces to argmax (temperature 0 or top_k 1)."""
        return self.temperature == 0 or self.top_k == 1


def _check_logprobs(name: str, value: int | None) -> None:
    """Raise SamplingParamsError unless value is None or an int in [0, MAX_LOGPROBS]."""
    if value is None:
        return
    _check_int(name, value, 0, f"alternatives per token, at most {MAX_LOGPROBS}")
    if value > MAX_LOGPROBS:
        raise SamplingParamsError(f"{name} must be <= {MAX_LOGPROBS}, got {value}", name)


def _check_int(name: str, value: object, minimum: int, meaning: str) -> None:
    """Raise SamplingParamsError unless value is an int (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingParamsError(f"{name} must be an int ({meaning}), got {value!r}", name)
    if value < minimum:
        raise SamplingParamsError(f"{name} must be >= {minimum} ({meaning}), got {value}", name)
