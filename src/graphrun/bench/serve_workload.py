"""The serving benchmark's requests: seeded, long-tailed prompt and output lengths, random token prompts.

Real traffic is long-tailed: most requests are short, a few are long, and the long ones decide how
full the batch stays. Lengths are log-normal around a median (sigma ~0.8: p90 ~2.8x the median), clipped
to [min_len, max]. Prompts are random token ids, so the server's tokenizer is never on the path and the
prompt length is exact. Every draw comes from a generator named by (seed, label, what), so graph and
eager modes get the very same requests, and warm-up requests never shift the timed ones.

`shared_prefix_len` puts the same random tokens (a system prompt, say) in front of every prompt, warm-up
ones included, so a server with prefix caching finds them cached; the drawn part follows it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from graphrun.errors import ConfigError

RESPONSE_FORMATS = ("none", "json-schema")
# a small schema whose strings leave the length open, so random-weight models mostly run to max_tokens
# (as free requests do) and the comparison is of the same amount of work: what the masks cost
BENCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "year": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "year", "tags"],
}


@dataclass(frozen=True, slots=True)
class Workload:
    """How many requests, and the distribution of their prompt and output lengths."""

    num_requests: int = 200
    prompt_len_median: int = 256
    prompt_len_max: int = 1024
    output_len_median: int = 128
    output_len_max: int = 512
    min_len: int = 4
    sigma: float = 0.8
    seed: int = 0
    shared_prefix_len: int = 0  # tokens every prompt starts with (a shared system prompt)
    response_format: str = "none"  # "json-schema": every request's output must match BENCH_SCHEMA

    def __post_init__(self) -> None:
        if self.response_format not in RESPONSE_FORMATS:
            raise ConfigError(
                f"--response-format takes one of {list(RESPONSE_FORMATS)}, got {self.response_format!r}"
            )
        if self.shared_prefix_len < 0:
            raise ConfigError(f"--shared-prefix-len must be >= 0, got {self.shared_prefix_len}")
        if self.num_requests < 1:
            raise ConfigError(f"--num-requests must be >= 1, got {self.num_requests}")
        if self.min_len < 1:
            raise ConfigError(f"--min-len must be >= 1, got {self.min_len}")
        for name in ("prompt_len", "output_len"):
            median, top = getattr(self, f"{name}_median"), getattr(self, f"{name}_max")
            if not self.min_len <= median <= top:
                flag = name.replace("_", "-")
                raise ConfigError(
                    f"--{flag}-median must lie in [--min-len, --{flag}-max] = [{self.min_len}, {top}], "
                    f"got {median}"
                )
        if not self.sigma >= 0:
            raise ConfigError(f"sigma must be >= 0, got {self.sigma}")


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request to send: its place in the list, its prompt ids and how many tokens it must produce."""

    index: int
    prompt_ids: list[int]
    max_tokens: int
    clipped: bool = False  # the drawn prompt was shortened to fit the context
    response_format: dict[str, Any] | None = None  # sent as is; None: free text


def lognormal_lengths(num: int, median: int, sigma: float, low: int, high: int, seed: int | str) -> list[int]:
    """`num` seeded lengths, log-normal with this median and sigma, rounded and clipped to [low, high]."""
    rng = random.Random(seed)  # a str seed is hashed with SHA-512: the same draws on every platform
    mu = math.log(median)
    return [min(high, max(low, round(rng.lognormvariate(mu, sigma)))) for _ in range(num)]


def plan_requests(
    workload: Workload, num: int, vocab_size: int, max_model_len: int, label: str
) -> list[RequestSpec]:
    """`num` requests drawn from `workload` under `label` ("timed", "warmup"); each fits max_model_len.

    A prompt that would not leave room for its output is shortened (the output length is kept, it is
    what the throughput counts) and marked `clipped`.
    """
    w = workload
    prompt_lens = lognormal_lengths(
        num, w.prompt_len_median, w.sigma, w.min_len, w.prompt_len_max, f"{w.seed}:{label}:prompt"
    )
    output_lens = lognormal_lengths(
        num, w.output_len_median, w.sigma, w.min_len, w.output_len_max, f"{w.seed}:{label}:output"
    )
    ids = random.Random(f"{w.seed}:{label}:ids")
    shared = random.Random(f"{w.seed}:shared").choices(range(vocab_size), k=w.shared_prefix_len)
    specs = []
    for index, (prompt_len, output_len) in enumerate(zip(prompt_lens, output_lens, strict=True)):
        max_tokens = min(output_len, max_model_len - 1)
        wanted = len(shared) + prompt_len
        fitted = max(1, min(wanted, max_model_len - max_tokens))
        own = [ids.randrange(vocab_size) for _ in range(max(0, fitted - len(shared)))]
        prompt_ids = (shared + own)[:fitted]
        specs.append(RequestSpec(index, prompt_ids, max_tokens, fitted < wanted, _response_format(w)))
    return specs


def _response_format(workload: Workload) -> dict[str, Any] | None:
    """The response_format every request of the workload carries (None: free text)."""
    if workload.response_format == "none":
        return None
    return {"type": "json_schema", "json_schema": {"name": "bench", "schema": BENCH_SCHEMA}}
