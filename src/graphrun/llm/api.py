"""The offline API: `LLM(model).generate(prompts, SamplingParams(...))`, with a progress bar on request."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class Completion:
    """One choice of one prompt's result (index: the choice, 0..n-1)."""

    prompt: str | list[int]
    text: str
    token_ids: list[int]
    finish_reason: str | None
    index: int = 0


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
    """A loaded model ready to generate; keyword arguments are EngineConfig fields."""

    def __init__(self, model: str = "tiny", **engine_options: Any) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **engine_options))
        self.tokenizer = self.engine.tokenizer
        self.last_stats: GenerateStats | None = None

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
        tokens: dict[int, list[int]] = {i: [] for i in order}
        reasons: dict[int, str | None] = {}
        bar = _progress_bar(len(order)) if progress else None
        while self.engine.has_unfinished():
            for out in self.engine.step():
                tokens[out.seq_id].append(out.new_token_id)
                if out.finished:
                    reasons[out.seq_id] = out.finish_reason
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        self.last_stats = GenerateStats(
            len(order), sum(map(len, tokens.values())), time.perf_counter() - start
        )
        return [
            Completion(p, self.tokenizer.decode(tokens[i]), tokens[i], reasons.get(i), j)
            for p, group in zip(items, groups, strict=True)
            for j, i in enumerate(group)
        ]


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
