"""Policies for the /act tests: the example policy in its tiny sizes, one with a stage forced to fail its
capture, one whose act() is slow (to fill the queue), and factories that return the wrong thing."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from graphrun.pipeline.policy.config import ExamplePolicyConfig
from graphrun.pipeline.policy.example import ExamplePolicy
from graphrun.pipeline.policy.observation import Observation
from graphrun.serve.act.example import example_policy
from graphrun.serve.act.source import PolicySettings, PolicySource

TINY = ExamplePolicyConfig.tiny()


def tiny(settings: PolicySettings) -> PolicySource:
    return example_policy(settings, config=TINY)


def tiny_prefix_fails(settings: PolicySettings) -> PolicySource:
    """The prefix stage over its memory budget (1 byte): it runs eager, the expert keeps its graphs."""
    forced = replace(settings.options, memory_budget_bytes=1)
    return example_policy(settings, config=TINY, stage_options={"prefix": forced})


def slow(settings: PolicySettings) -> PolicySource:
    """The tiny policy whose every batch takes 0.3 s more."""
    source = tiny(settings)

    def batch(requests, keys):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        return source.batch(requests, keys)

    return replace(source, batch=batch)


def not_a_source(settings: PolicySettings) -> str:
    return "a pipeline without its tensors"


def reference(settings_ladder: tuple[int, ...], steps: int | None = None) -> ExamplePolicy:
    """The served tiny policy's twin (same seed, same weights), for eager references."""
    config = replace(TINY, batch_sizes=settings_ladder, num_steps=steps or TINY.num_steps)
    return ExamplePolicy(config)


def observation_arrays(rows: int, seed: int, config: ExamplePolicyConfig = TINY) -> dict[str, np.ndarray]:
    """A random observation with its noise, as wire arrays."""
    gen = np.random.default_rng(seed)
    c = config
    return {
        "images": gen.standard_normal((rows, c.num_patches, c.patch_dim)).astype(np.float32),
        "tokens": gen.integers(0, c.vocab_size, (rows, c.num_tokens)).astype(np.int64),
        "state": gen.standard_normal((rows, c.state_dim)).astype(np.float32),
        "noise": gen.standard_normal((rows, c.horizon, c.action_dim)).astype(np.float32),
    }


def eager_actions(policy: ExamplePolicy, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The policy's eager act() on the arrays (its bare modules, no pipeline)."""
    obs = Observation(
        images=torch.from_numpy(arrays["images"]).to(policy.device, policy.dtype),
        tokens=torch.from_numpy(arrays["tokens"]).to(policy.device),
        state=torch.from_numpy(arrays["state"]).to(policy.device, policy.dtype),
        noise=torch.from_numpy(arrays["noise"]).to(policy.device, policy.dtype),
    )
    return policy.act_eager(obs).float().cpu().numpy()


def json_body(arrays: dict[str, np.ndarray], **extra: object) -> dict:
    inputs = {name: {"dtype": a.dtype.name, "data": a.tolist()} for name, a in arrays.items()}
    return {"inputs": inputs, **extra}
