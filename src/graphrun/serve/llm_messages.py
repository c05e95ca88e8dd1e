"""What an LLM request carries through the engine host (host/messages.py): its submission, its events, and
the model's info.

A token event stays a plain `(token id, finish reason)` tuple: it pickles ten times faster than an
object, and a step has one per stream. The host ends an aborted request with `(None, "abort")`, a token
event too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graphrun.llm.logprobs import TokenLogprobs
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class Submit:
    """One prompt's requests (n choices share one prefill; choice j is seeded seed + j)."""

    request_ids: tuple[int, ...]
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    arrival: float  # time.monotonic() at submission: CLOCK_MONOTONIC, one clock for every process


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the HTTP side needs of the served model, and its start-up facts for /health."""

    tokenizer: Tokenizer
    vocab_size: int
    max_model_len: int
    source: str  # the preset or folder it was loaded from
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PromptCached:
    """How many prompt tokens the prefix cache held for the request (before its first token)."""

    num_tokens: int


@dataclass(frozen=True, slots=True)
class PromptLogprobs:
    """The logprobs of the prompt's tokens but the first (echo with logprobs), before the first token."""

    items: tuple[TokenLogprobs, ...]


Token = tuple[int | None, str | None]  # (token id, finish reason); (None, "abort") after an abort
# a token, or why the request failed, or (never terminal) the prefix-cache hit, the logprobs of the token
# whose event comes next, or the prompt's
Event = Token | Exception | PromptCached | TokenLogprobs | PromptLogprobs


def is_terminal(event: Event) -> bool:
    """True for the event that ends a request: an error or a finish reason."""
    if isinstance(event, PromptCached | TokenLogprobs | PromptLogprobs):
        return False
    return isinstance(event, Exception) or event[1] is not None
