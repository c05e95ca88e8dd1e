"""An observation for the example policy, and the check that names the tensor a bad one got wrong.

A served policy gets observations from clients, so every tensor is checked before any stage runs: a
wrong shape would otherwise fail deep in a matmul, and an out-of-range token id on a GPU kills the CUDA
context (a device-side assert), not just the request. The token check reads one flag back from the
device per act().
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch

from graphrun.errors import GraphInputError
from graphrun.pipeline.policy.config import ExamplePolicyConfig


class ObservationError(GraphInputError):
    """An observation tensor has the wrong type, shape, dtype, device or values (the message names it)."""


@dataclass(frozen=True, slots=True)
class Observation:
    """One observation, B rows: images (B, num_patches, patch_dim) float, tokens (B, num_tokens) integer ids,
    state (B, state_dim) float; `id` keys the prefix cache (None: not cached); `noise` (B, horizon,
    action_dim), where the chunk's denoising starts (None: drawn from the policy's seeded generator)."""

    images: torch.Tensor
    tokens: torch.Tensor
    state: torch.Tensor
    id: Hashable | None = None
    noise: torch.Tensor | None = None


def expected_shapes(c: ExamplePolicyConfig) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape after its batch dimension."""
    return {
        "images": (c.num_patches, c.patch_dim),
        "tokens": (c.num_tokens,),
        "state": (c.state_dim,),
        "noise": (c.horizon, c.action_dim),
    }


def check_observation(
    obs: Observation, c: ExamplePolicyConfig, device: torch.device, dtype: torch.dtype
) -> int:
    """The observation's batch size; raise ObservationError naming the first tensor that does not fit."""
    if not isinstance(obs, Observation):
        raise ObservationError(f"act() takes an Observation, got {type(obs).__name__}")
    shapes = expected_shapes(c)
    batch = None
    for name, rest in shapes.items():
        t = getattr(obs, name)
        if t is None and name == "noise":
            continue
        if not isinstance(t, torch.Tensor):
            raise ObservationError(
                f"observation tensor {name!r} must be a torch.Tensor, got {type(t).__name__}"
            )
        if t.dim() != len(rest) + 1 or tuple(t.shape[1:]) != rest or t.shape[0] < 1:
            want = ", ".join(map(str, rest))
            raise ObservationError(
                f"observation tensor {name!r} has shape {tuple(t.shape)}; expected (batch, {want})"
            )
        if batch is not None and t.shape[0] != batch:
            raise ObservationError(f"observation tensor {name!r} has {t.shape[0]} rows; 'images' has {batch}")
        batch = int(t.shape[0])
        _check_kind(name, t, device, dtype)
    assert batch is not None
    if bool(((obs.tokens < 0) | (obs.tokens >= c.vocab_size)).any()):
        raise ObservationError(f"observation tensor 'tokens' holds ids outside [0, {c.vocab_size})")
    return batch


def _check_kind(name: str, t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> None:
    if _concrete(t.device) != _concrete(device):
        raise ObservationError(f"observation tensor {name!r} is on {t.device}; the policy runs on {device}")
    if name == "tokens":
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ObservationError(f"observation tensor 'tokens' must hold integer ids, got {t.dtype}")
    elif t.dtype != dtype:
        raise ObservationError(f"observation tensor {name!r} is {t.dtype}; the policy runs in {dtype}")


def _concrete(device: torch.device) -> torch.device:
    """`cuda` as the device it means now (`cuda:0`); `cpu` as `cpu:0`: a policy built for "cuda" takes
    tensors on cuda:0 (found on an H100: every observation was refused)."""
    if device.index is not None:
        return device
    index = torch.cuda.current_device() if device.type == "cuda" else 0
    return torch.device(device.type, index)
