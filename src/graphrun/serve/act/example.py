"""The built-in example policy (graphrun.pipeline.policy) as a served policy: `--policy example`.

Its /act takes `images` (B, num_patches, patch_dim) float32, `tokens` (B, num_tokens) int64 ids in
[0, vocab_size), `state` (B, state_dim) float32 and, optionally, `noise` (B, horizon, action_dim) float32,
where denoising starts (a request without it gets noise drawn from a generator seeded by the policy's
seed); it answers `actions` (B, horizon, action_dim) float32. The requests of a batch are concatenated
along dim 0 into one Observation, keyed per request (RowKeys) for the prefix cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from graphrun.graphs.options import RunnerOptions
from graphrun.pipeline.policy.config import ExamplePolicyConfig
from graphrun.pipeline.policy.example import ExamplePolicy
from graphrun.pipeline.policy.observation import Observation
from graphrun.pipeline.rows import RowKeys
from graphrun.serve.act.source import PolicySettings, PolicySource
from graphrun.serve.infer.schema import TensorSpec


def example_policy(
    settings: PolicySettings,
    *,
    config: ExamplePolicyConfig | None = None,
    stage_options: Mapping[str, RunnerOptions] | None = None,
) -> PolicySource:
    """The example policy (`config`, default sizes unless given) with the server's ladder, steps, device
    and dtype, captured stage by stage (`stage_options`: one stage's own options, as the pipeline takes)."""
    base = config or ExamplePolicyConfig()
    c = replace(base, batch_sizes=settings.ladder, num_steps=settings.denoising_steps or base.num_steps)
    policy = ExamplePolicy(c, device=settings.device, dtype=settings.dtype)
    pipeline = policy.pipeline(
        settings.options, stage_options=stage_options, registry=settings.options.registry
    )
    inputs = (
        TensorSpec("images", "float32", (None, c.num_patches, c.patch_dim), finite=True),
        TensorSpec("tokens", "int64", (None, c.num_tokens)),
        TensorSpec("state", "float32", (None, c.state_dim), finite=True),
        TensorSpec("noise", "float32", (None, c.horizon, c.action_dim), finite=True),
    )
    return PolicySource(
        pipeline,
        inputs,
        TensorSpec("actions", "float32", (None, c.horizon, c.action_dim)),
        ExampleBatch(policy),
        optional=frozenset({"noise"}),
        ranges=(("tokens", 0, c.vocab_size),),
        name=c.model,
    )


class ExampleBatch:
    """A batch of requests -> one Observation on the policy's device and dtype (noise drawn for the
    requests that sent none)."""

    def __init__(self, policy: ExamplePolicy) -> None:
        self.policy = policy
        self._noise = torch.Generator(policy.device).manual_seed(policy.config.seed + 3)

    def __call__(self, requests: Sequence[Mapping[str, np.ndarray]], keys: RowKeys | None) -> Observation:
        p = self.policy

        def joined(name: str, dtype: torch.dtype) -> torch.Tensor:
            array = np.concatenate([request[name] for request in requests])
            return torch.from_numpy(array).to(p.device, dtype)

        noise = [self._noise_of(request) for request in requests]
        return Observation(
            images=joined("images", p.dtype),
            tokens=joined("tokens", torch.int64),
            state=joined("state", p.dtype),
            id=keys,
            noise=noise[0] if len(noise) == 1 else torch.cat(noise),
        )

    def _noise_of(self, request: Mapping[str, np.ndarray]) -> torch.Tensor:
        p, c = self.policy, self.policy.config
        if "noise" in request:
            return torch.from_numpy(request["noise"]).to(p.device, p.dtype)
        rows = request["images"].shape[0]
        shape = (rows, c.horizon, c.action_dim)
        return torch.randn(shape, generator=self._noise, device=p.device, dtype=p.dtype)
