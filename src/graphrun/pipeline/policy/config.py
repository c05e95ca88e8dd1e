"""The example policy's sizes: one frozen, validated object (a tiny preset for CPU tests).

The defaults are shaped like a pi0-class policy scaled down so that the expert is launch-bound on a GPU:
narrow layers (128 wide), several of them, a 50 x 7 action chunk; each denoising step is ~70 small kernels
whose launches cost more than their math. The prefix (two cameras of 32 patches, 16 language tokens, a
robot state) is wider and runs once per observation.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphrun.errors import ConfigError
from graphrun.pipeline.stage import check_label


@dataclass(frozen=True, slots=True)
class ExamplePolicyConfig:
    """Sizes of the example policy; `model` is its metric label (one embodiment/model per pipeline)."""

    model: str = "example"
    num_patches: int = 64  # image patches over all cameras
    patch_dim: int = 588  # 14 x 14 x 3 pixels per patch
    num_tokens: int = 16  # language tokens
    vocab_size: int = 1024
    state_dim: int = 14  # robot proprioception
    prefix_width: int = 256
    prefix_layers: int = 4
    prefix_heads: int = 4
    expert_width: int = 128
    expert_layers: int = 6
    expert_heads: int = 4
    horizon: int = 50  # actions per chunk
    action_dim: int = 7
    num_steps: int = 10  # denoising (Euler) steps per chunk
    seed: int = 0  # weights, and the noise a chunk starts from when the observation brings none
    batch_sizes: tuple[int, ...] = (1,)  # each stage's capture ladder
    prefix_cache_entries: int = 16  # prefixes kept by observation id

    def __post_init__(self) -> None:
        check_label("model", self.model)
        counts = {
            name: getattr(self, name)
            for name in ("num_patches", "patch_dim", "num_tokens", "vocab_size", "state_dim", "horizon")
        }
        counts.update(action_dim=self.action_dim, num_steps=self.num_steps)
        bad = {name: value for name, value in counts.items() if value < 1}
        if bad:
            raise ConfigError(f"example policy sizes must be >= 1, got {bad}")
        for width, heads in ((self.prefix_width, self.prefix_heads), (self.expert_width, self.expert_heads)):
            if heads < 1 or width % heads or (width // heads) % 2:
                raise ConfigError(f"width {width} must split into {heads} heads of an even size")
        if self.expert_width % 2:
            raise ConfigError(f"expert_width must be even (sin/cos time features), got {self.expert_width}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"batch_sizes must be positive, got {self.batch_sizes}")
        if self.prefix_cache_entries < 0:
            raise ConfigError(f"prefix_cache_entries must be >= 0, got {self.prefix_cache_entries}")

    @property
    def prefix_len(self) -> int:
        """Prefix tokens: image patches, language tokens and one state token."""
        return self.num_patches + self.num_tokens + 1

    @classmethod
    def tiny(cls, **changes: object) -> ExamplePolicyConfig:
        """A few-kilobyte policy for CPU tests (seconds on the sim backend)."""
        small: dict[str, object] = dict(
            num_patches=4,
            patch_dim=12,
            num_tokens=3,
            vocab_size=32,
            state_dim=3,
            prefix_width=16,
            prefix_layers=1,
            prefix_heads=2,
            expert_width=16,
            expert_layers=2,
            expert_heads=2,
            horizon=4,
            action_dim=2,
            num_steps=3,
        )
        small.update(changes)
        return cls(**small)  # type: ignore[arg-type]
