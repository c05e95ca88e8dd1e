"""The offline API: `LLM(model).generate(prompts, SamplingParams(...))`, with a progress bar on request.

Logprobs come as the engine computes them (llm/logprobs.py): with SamplingParams.logprobs k, each output
token's `TokenLogprobs` (its logprob under the model's raw logits and the k most likely alternatives);
with prompt_logprobs k, the same for every prompt token but the first (which has no context to score it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from graphrun.llm.engine import LLMEngine, StepOutput
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.logprobs import TokenLogprobs
from graphrun.llm.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class Completion:
    """One choice of one prompt's result (index: the choice, 0..n-1).

    logprobs: one per token id when SamplingParams.logprobs asked (else None); prompt_logprobs: one per
    prompt token but the first when SamplingParams.prompt_logprobs asked (else None).
    """

    prompt: str | list[int]
    text: str
    token_ids: list[int]
    finish_reason: str | None
    index: int = 0
    logprobs: tuple[TokenLogprobs, ...] | None = None
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None


@dataclass(frozen=True, slots=True)
class GenerateStats:
    """What the last generate() call did, for reports and benchmarks."""

    num_requests: int
    num_output_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        """Output tokens per wall second."""
        return self.num_output_tokens / self.seconds if self.seconds > 0 else 0.0


class LLM:
    """A loaded model ready to generate; keyword arguments are EngineConfig fields.

    tensor_parallel_size=N starts N-1 worker processes beside this one (llm/parallel/); close() (or a
    `with` block) stops them, as collecting the LLM or leaving the interpreter does."""

    def __init__(self, model: str = "tiny", **engine_options: Any) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **engine_options))
        self.tokenizer = self.engine.tokenizer
        self.last_stats: GenerateStats | None = None

    def close(self) -> None:
        """Stop the engine's worker ranks, if any (idempotent)."""
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[list[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        progress: bool = False,
        n: int = 1,
    ) -> list[Completion]:
        """Generate n choices for every prompt (continuous batching), prompt-major: result i * n + j is
        prompt i's choice j. A prompt's choices share one prefill; choice j samples with seed + j."""
        items: list[str | list[int]] = [prompts] if isinstance(prompts, str) else list(prompts)
        plist = _per_prompt(params, len(items))
        start = time.perf_counter()
        groups = [self.engine.add_choices(p, sp, n) for p, sp in zip(items, plist, strict=True)]
        order = [seq_id for group in groups for seq_id in group]
        outs = {seq_id: _Gathered() for seq_id in order}
        bar = _progress_bar(len(order)) if progress else None
        while self.engine.has_unfinished():
            for out in self.engine.step():
                one = outs[out.seq_id]
                one.add(out)
                if out.finished and bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        self.last_stats = GenerateStats(
            len(order), sum(len(one.token_ids) for one in outs.values()), time.perf_counter() - start
        )
        return [
            outs[i].completion(p, self.tokenizer.decode(outs[i].token_ids), j, sp)
            for p, sp, group in zip(items, plist, groups, strict=True)
            for j, i in enumerate(group)
        ]


@dataclass(slots=True)
class _Gathered:
    """One choice's outputs as the engine delivers them."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None
    finish_reason: str | None = None

    def add(self, out: StepOutput) -> None:
        self.token_ids.append(out.new_token_id)
        if out.logprobs is not None:
            self.logprobs.append(out.logprobs)
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.finished:
            self.finish_reason = out.finish_reason

    def completion(
        self, prompt: str | list[int], text: str, index: int, params: SamplingParams
    ) -> Completion:
        logprobs = tuple(self.logprobs) if params.logprobs is not None else None
        prompt_logprobs = self.prompt_logprobs if params.prompt_logprobs is not None else None
        return Completion(prompt, text, self.token_ids, self.finish_reason, index, logprobs, prompt_logprobs)


def _per_prompt(params: SamplingParams | Sequence[SamplingParams] | None, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * n
    if isinstance(params, SamplingParams):
        return [replace(params)] * n
    plist = list(params)
    if len(plist) != n:
        raise ValueError(f"got {len(plist)} SamplingParams for {n} prompts; pass one, or one per prompt")
    return plist


def _progress_bar(total: int) -> Any:
    from tqdm import tqdm  # imported on use: only batch jobs with progress=True need it

    return tqdm(total=total, desc="generate", unit="req")
