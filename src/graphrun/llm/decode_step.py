"""What the decode graphs capture: one callable per kind, from a step's packed inputs to its tokens.

Every kind reads a `DecodeInputs` (step_inputs.py) through its two packed tensors, feeds each row's input
token from `last_tokens` when the row's feed row says so (how asynchronous scheduling passes step n's
tokens to step n+1 on the device), and leaves its sampled tokens in last_tokens[:rows]. Kinds:
- "sampling", "greedy", "logprobs" (DecodeStep): the forward, the logits, sampling (argmax only for
  greedy-only batches) and, in the logprobs kind, a log-softmax and a top-k into LogprobBuffers;
- "structured" (StructuredForward): the forward only, returning the final hidden states;
- "mask-greedy", "mask-sampling" (MaskedSample): hidden states -> logits -> token masks
  (token_masks.py) -> sampling; "mask-logprobs" is the same with logprobs, run eagerly only.

Why a structured step is two callables: its token masks depend on the token the step before sampled,
which the host learns only once that step has run. The forward does not need them, so the engine queues
the forward, then waits for the previous step's tokens, advances the grammars and fills the masks while
the device runs the forward, and then queues the masked sampling. One callable would make the host fill
every mask before it could launch anything, so its host work and the device's would alternate. The cut is
at the hidden states ((rows, hidden_size), small), not the logits ((rows, vocab) float32): the static
buffer between the two graphs stays a few hundred kilobytes, and the LM head runs in the second.
Logprobs of a structured step are those of the raw logits, as in the other kinds; sampling sees the
masked ones. They are computed only when some row asks, eagerly (a rare pair: one graph kind fewer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.logprobs import LogprobBuffers
from graphrun.llm.models import DecoderLM
from graphrun.llm.sampler import SamplingTensors, greedy_sample, sample
from graphrun.llm.step_inputs import DecodeInputs
from graphrun.llm.token_masks import apply_token_masks

KVCaches = Sequence[tuple[torch.Tensor, torch.Tensor]]
FORWARD_KINDS = ("sampling", "greedy", "logprobs", "structured")  # (ints, floats) -> tokens, or hidden
MASK_KINDS = ("mask-greedy", "mask-sampling")  # (hidden, ints, floats) -> tokens: captured
MASK_LOGPROBS = "mask-logprobs"  # a masked sampling that also writes logprobs: eager only


def decode_hidden(
    model: DecoderLM, kv_caches: KVCaches, last_tokens: torch.Tensor, step: DecodeInputs
) -> torch.Tensor:
    """The step's final hidden states (rows, hidden_size); its K/V written into the cache."""
    feed = step.feed_rows
    input_ids = torch.where(feed >= 0, last_tokens[feed.clamp(min=0)], step.token_ids)
    meta = AttentionMetadata(
        slot_mapping=step.slots,
        block_tables=step.block_tables.to(torch.int32),
        context_lens=step.context_lens.to(torch.int32),
    )
    hidden: torch.Tensor = model(input_ids, step.positions, meta, kv_caches)
    return hidden


def sample_rows(logits: torch.Tensor, step: DecodeInputs, greedy: bool) -> torch.Tensor:
    """(rows, vocab) logits -> (rows,) int64 tokens with the step's per-row sampling parameters."""
    if greedy:
        return greedy_sample(logits)
    params = SamplingTensors(
        temperature=step.temperature, top_p=step.top_p, top_k=step.top_k.to(torch.int32), seeds=step.seeds
    )
    return sample(logits, params, step.positions)


class DecodeStep:
    """The sampling, greedy and logprobs kinds: packed inputs -> next token ids (rows,) int64."""

    def __init__(
        self,
        model: DecoderLM,
        kv_caches: KVCaches,
        greedy: bool,
        last_tokens: torch.Tensor,
        logprobs: LogprobBuffers | None = None,
    ) -> None:
        self._model = model
        self._kv_caches = kv_caches
        self._greedy = greedy
        self._last_tokens = last_tokens
        self._logprobs = logprobs  # given: the "logprobs" kind, which also writes them (logprobs.py)

    def __call__(self, ints: torch.Tensor, floats: torch.Tensor) -> torch.Tensor:
        """Side effect: the tokens land in last_tokens[:rows]; in the logprobs kind, their logprobs in
        the LogprobBuffers' rows [:rows]."""
        step = DecodeInputs.over(ints, floats)
        hidden = decode_hidden(self._model, self._kv_caches, self._last_tokens, step)
        logits = self._model.compute_logits(hidden)  # (rows, vocab) float32
        tokens = sample_rows(logits, step, self._greedy)
        self._last_tokens[: tokens.shape[0]].copy_(tokens)
        if self._logprobs is not None:
            self._logprobs.write_prefix(logits, tokens)
        return tokens


class StructuredForward:
    """The structured kind's first half: packed inputs -> hidden states (rows, hidden_size)."""

    def __init__(self, model: DecoderLM, kv_caches: KVCaches, last_tokens: torch.Tensor) -> None:
        self._model = model
        self._kv_caches = kv_caches
        self._last_tokens = last_tokens

    def __call__(self, ints: torch.Tensor, floats: torch.Tensor) -> torch.Tensor:
        return decode_hidden(self._model, self._kv_caches, self._last_tokens, DecodeInputs.over(ints, floats))


class MaskedSample:
    """The structured kind's second half: hidden states and the same packed inputs -> tokens (rows,)."""

    def __init__(
        self,
        model: DecoderLM,
        masks: torch.Tensor,
        greedy: bool,
        last_tokens: torch.Tensor,
        logprobs: LogprobBuffers | None = None,
    ) -> None:
        self._model = model
        self._masks = masks  # (rows of last_tokens, words) int32, filled by the engine before each call
        self._greedy = greedy
        self._last_tokens = last_tokens
        self._logprobs = logprobs  # given: mask-logprobs, which writes the raw logits' logprobs

    def __call__(self, hidden: torch.Tensor, ints: torch.Tensor, floats: torch.Tensor) -> torch.Tensor:
        """Side effect: the tokens land in last_tokens[:rows] (and logprobs as DecodeStep's do)."""
        logits = self._model.compute_logits(hidden)  # (rows, vocab) float32
        allowed = apply_token_masks(logits, self._masks)
        tokens = sample_rows(allowed, DecodeInputs.over(ints, floats), self._greedy)
        self._last_tokens[: tokens.shape[0]].copy_(tokens)
        if self._logprobs is not None:
            self._logprobs.write_prefix(logits, tokens)
        return tokens


def decode_step(
    kind: str,
    model: DecoderLM,
    kv_caches: KVCaches,
    last_tokens: torch.Tensor,
    logprobs: LogprobBuffers | None,
    masks: torch.Tensor | None,
) -> Callable[..., torch.Tensor]:
    """The callable of one kind (see the module docstring); the mask kinds need `masks`, mask-logprobs
    and logprobs need `logprobs`."""
    if kind == "structured":
        return StructuredForward(model, kv_caches, last_tokens)
    if kind in (*MASK_KINDS, MASK_LOGPROBS):
        assert masks is not None, kind
        wants = logprobs if kind == MASK_LOGPROBS else None
        return MaskedSample(model, masks, kind == "mask-greedy", last_tokens, wants)
    wants = logprobs if kind == "logprobs" else None
    return DecodeStep(model, kv_caches, greedy=kind == "greedy", last_tokens=last_tokens, logprobs=wants)


def mask_kind(greedy: bool, logprobs: bool) -> str:
    """The masked sampling a structured step runs: with logprobs (eager), greedy, or sampling."""
    return MASK_LOGPROBS if logprobs else "mask-greedy" if greedy else "mask-sampling"
