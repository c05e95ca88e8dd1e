"""The example policy's two stages as modules: the prefix encoder and one denoising step of the expert.

PrefixEncoder reads an observation (image patches, language tokens, robot state) once and returns, like a
pi0 prefix KV cache, the keys and values every expert layer attends to. ExpertStep is one Euler step of
flow matching: x_{t+dt} = x_t + dt * v(x_t, t, prefix), from noise at t=0 to the action chunk at t=1.
The integration is inside the step, so a step is one graph replay and nothing runs eager between steps;
the loop over the N steps is Python, outside the graph (one replay per step: the honest baseline).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from graphrun.pipeline.policy.config import ExamplePolicyConfig
from graphrun.pipeline.policy.layers import ExpertLayer, SelfBlock


class PrefixEncoder(nn.Module):
    """(images, tokens, state) -> keys/values for every expert layer, (B, 2 * expert_layers, Lp, We)."""

    def __init__(self, c: ExamplePolicyConfig) -> None:
        super().__init__()
        self.expert_layers, self.expert_width = c.expert_layers, c.expert_width
        self.patch = nn.Linear(c.patch_dim, c.prefix_width)
        self.embed = nn.Embedding(c.vocab_size, c.prefix_width)
        self.state = nn.Linear(c.state_dim, c.prefix_width)
        self.position = nn.Parameter(torch.zeros(c.prefix_len, c.prefix_width))
        self.blocks = nn.ModuleList(SelfBlock(c.prefix_width, c.prefix_heads) for _ in range(c.prefix_layers))
        self.norm = nn.LayerNorm(c.prefix_width)
        self.to_kv = nn.Linear(c.prefix_width, 2 * c.expert_layers * c.expert_width)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        # images: (B, num_patches, patch_dim); tokens: (B, num_tokens) int; state: (B, state_dim)
        parts = (self.patch(images), self.embed(tokens), self.state(state).unsqueeze(1))
        h = torch.cat(parts, dim=1) + self.position  # (B, Lp, Wp)
        for block in self.blocks:
            h = block(h)
        kv = self.to_kv(self.norm(h))  # (B, Lp, 2 * layers * We)
        b, lp, _ = kv.shape
        return kv.view(b, lp, 2 * self.expert_layers, self.expert_width).transpose(1, 2).contiguous()


class ExpertStep(nn.Module):
    """(prefix kv, x_t (B, horizon, action_dim), t (B, 1)) -> x_{t+dt}: one Euler step, dt = 1 / num_steps."""

    def __init__(self, c: ExamplePolicyConfig) -> None:
        super().__init__()
        self.dt = 1.0 / c.num_steps
        self.action_in = nn.Linear(c.action_dim, c.expert_width)
        self.time_in = nn.Linear(c.expert_width, c.expert_width)
        self.time_out = nn.Linear(c.expert_width, c.expert_width)
        self.position = nn.Parameter(torch.zeros(c.horizon, c.expert_width))
        self.layers = nn.ModuleList(
            ExpertLayer(c.expert_width, c.expert_heads) for _ in range(c.expert_layers)
        )
        self.norm = nn.LayerNorm(c.expert_width)
        self.action_out = nn.Linear(c.expert_width, c.action_dim)
        half = c.expert_width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def velocity(self, kv: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The learned flow v(x_t, t | prefix), (B, horizon, action_dim)."""
        angles = t * self.get_buffer("freqs")  # (B, We / 2)
        time = torch.cat((angles.sin(), angles.cos()), dim=-1)
        time = self.time_out(torch.nn.functional.silu(self.time_in(time)))  # (B, We)
        h = self.action_in(x) + self.position + time.unsqueeze(1)
        for i, layer in enumerate(self.layers):
            h = layer(h, kv[:, 2 * i], kv[:, 2 * i + 1])
        return self.action_out(self.norm(h))

    def forward(self, kv: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x + self.dt * self.velocity(kv, x, t)


def seeded_(module: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter from `seed` (no global RNG touched): norms 1/0, matrices ~ N(0, 1/fan_in),
    biases and positions small; the same seed gives the same weights on any device."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".norm" in f".{name}" and name.endswith("weight"):
                values = torch.ones(p.shape)
            elif p.dim() >= 2:
                values = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1])
            else:
                values = torch.randn(p.shape, generator=gen) * 0.02
            p.copy_(values.to(p.dtype))
    return module
