"""Layers against plain formulas and against transformers' own rope code."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from graphrun.llm.config import ModelConfig, UnsupportedModelError
from graphrun.llm.layers.mlp import GatedMLP
from graphrun.llm.layers.norm import RMSNorm
from graphrun.llm.layers.rotary import RotaryEmbedding, apply_rotary, inv_freq_for

LLAMA32_SCALING = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _config(**overrides):
    fields = dict(
        architecture="LlamaForCausalLM",
        vocab_size=128,
        hidden_size=256,
        intermediate_size=64,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        rope_theta=500000.0,
        max_position_embeddings=1024,
    )
    return ModelConfig(**{**fields, **overrides})


def _hf_llama_config(config: ModelConfig) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        rope_theta=config.rope_theta,
        rope_scaling=config.rope_scaling,
        max_position_embeddings=config.max_position_embeddings,
    )


def _norm(dim=32, eps=1e-6):
    norm = RMSNorm(dim, eps)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(dim) + 0.5)
    return norm


def test_rmsnorm_matches_the_formula():
    norm, x = _norm(), torch.randn(5, 32)
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    normed, residual = norm(x)
    torch.testing.assert_close(normed, expected)
    assert residual is x


def test_rmsnorm_fused_residual_equals_add_then_norm():
    norm, x, residual = _norm(), torch.randn(5, 32), torch.randn(5, 32)
    normed, new_residual = norm(x, residual)
    assert torch.equal(new_residual, x + residual)
    assert torch.equal(normed, norm(x + residual)[0])


def test_rmsnorm_computes_in_float32_and_returns_the_input_dtype():
    norm = _norm().to(torch.bfloat16)
    x = (torch.randn(5, 32) * 100).to(torch.bfloat16)  # large values: bf16 squares would lose digits
    normed, _ = norm(x)
    assert normed.dtype == torch.bfloat16
    reference = norm.weight.float() * x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(normed.float(), reference, atol=0.02, rtol=0.01)


def _rotate_by_formula(x, positions, theta):
    """Per pair (i, i + d/2): a plain 2-D rotation by position * theta^(-2i/d), in float64."""
    out = x.double().clone()
    dim = x.shape[-1]
    for t, pos in enumerate(positions.tolist()):
        for i in range(dim // 2):
            angle = pos * theta ** (-2 * i / dim)
            a, b = x[t, :, i].double(), x[t, :, i + dim // 2].double()
            out[t, :, i] = a * math.cos(angle) - b * math.sin(angle)
            out[t, :, i + dim // 2] = b * math.cos(angle) + a * math.sin(angle)
    return out


def test_rotary_matches_a_plain_rotation():
    config = _config(head_dim=16, rope_theta=10000.0)
    rotary = RotaryEmbedding(config)
    positions = torch.tensor([0, 1, 7, 300, 1023])
    x = torch.randn(5, 3, 16)
    got = apply_rotary(x, *rotary(positions))
    torch.testing.assert_close(got.double(), _rotate_by_formula(x, positions, 10000.0), atol=1e-4, rtol=1e-4)


def test_rotary_scores_depend_only_on_relative_position():
    rotary = RotaryEmbedding(_config(head_dim=16))
    q, k = torch.randn(1, 1, 16), torch.randn(1, 1, 16)

    def score(pos_q, pos_k):
        rq = apply_rotary(q, *rotary(torch.tensor([pos_q])))
        rk = apply_rotary(k, *rotary(torch.tensor([pos_k])))
        return (rq * rk).sum()

    torch.testing.assert_close(score(10, 3), score(107, 100), atol=1e-4, rtol=1e-4)


def test_llama3_frequencies_equal_transformers():
    config = _config(rope_scaling=LLAMA32_SCALING)
    ours = inv_freq_for(config)
    theirs, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](_hf_llama_config(config), "cpu")
    assert attention_factor == 1.0
    assert torch.equal(ours, theirs)
    plain = inv_freq_for(_config())
    # all three bands occur, so the test covers the kept, the scaled and the blended frequencies
    assert (ours == plain).any() and (ours == plain / 32).any()
    assert ((ours != plain) & (ours != plain / 32)).any()


@pytest.mark.parametrize("scaling", [None, LLAMA32_SCALING], ids=["default", "llama3"])
def test_cos_sin_table_equals_transformers_rotary(scaling):
    config = _config(rope_scaling=scaling)
    positions = torch.arange(config.max_position_embeddings)
    cos, sin = RotaryEmbedding(config)(positions)  # each (positions, 1, head_dim // 2)
    hf_cos, hf_sin = LlamaRotaryEmbedding(_hf_llama_config(config))(torch.zeros(1), positions[None])
    assert torch.equal(torch.cat([cos[:, 0], cos[:, 0]], dim=-1), hf_cos[0])
    assert torch.equal(torch.cat([sin[:, 0], sin[:, 0]], dim=-1), hf_sin[0])


def test_rotary_table_is_rebuilt_in_float32_and_cast_per_step():
    rotary = RotaryEmbedding(_config(rope_scaling=LLAMA32_SCALING))
    expected = rotary.cos_cache.clone()
    rotary.to(torch.bfloat16)
    rotary.reset_cache()
    assert rotary.cos_cache.dtype == torch.float32 and torch.equal(rotary.cos_cache, expected)
    cos, sin = rotary(torch.tensor([3, 900]), torch.bfloat16)
    assert cos.dtype == sin.dtype == torch.bfloat16
    assert torch.equal(cos[:, 0], expected[[3, 900]].to(torch.bfloat16))


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic"])
def test_unknown_rope_type_is_refused_by_name(rope_type):
    config = _config(rope_scaling={"rope_type": rope_type, "factor": 4.0})
    with pytest.raises(UnsupportedModelError, match=rope_type):
        RotaryEmbedding(config)


def test_llama3_scaling_without_its_keys_is_refused():
    config = dataclasses.replace(_config(), rope_scaling={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(UnsupportedModelError, match="low_freq_factor"):
        RotaryEmbedding(config)


def test_gated_mlp_equals_separate_gate_and_up():
    mlp = GatedMLP(hidden_size=16, intermediate_size=24)
    gate_w, up_w = mlp.gate_up_proj.weight[:24], mlp.gate_up_proj.weight[24:]
    x = torch.randn(3, 16)
    expected = mlp.down_proj(F.silu(x @ gate_w.T) * (x @ up_w.T))
    torch.testing.assert_close(mlp(x), expected)
