"""Built-in model shapes: the architecture and size of real checkpoints, with no weights attached.

Kept apart from presets.py (which builds and loads models, with torch) so that the CLI can check a
`--model` name and its context limit before torch loads. Presets pair with the ByteTokenizer, so their
special ids are its bos (256) and eos (257).
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from graphrun.errors import ConfigError
from graphrun.llm.config import ModelConfig
from graphrun.llm.tokenizer import BYTE_BOS_ID, BYTE_EOS_ID

PRESETS: MappingProxyType[str, ModelConfig] = MappingProxyType(
    {
        # for CPU tests: every code path of the Qwen3 family, milliseconds per step
        "tiny": ModelConfig(
            architecture="Qwen3ForCausalLM",
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            rms_norm_eps=1e-6,
            rope_theta=1_000_000.0,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
            qk_norm=True,
            bos_token_id=BYTE_BOS_ID,
            eos_token_ids=(BYTE_EOS_ID,),
        ),
        "qwen3-0.6b-shape": ModelConfig(
            architecture="Qwen3ForCausalLM",
            vocab_size=151936,
            hidden_size=1024,
            intermediate_size=3072,
            num_layers=28,
            num_heads=16,
            num_kv_heads=8,
            head_dim=128,
            rms_norm_eps=1e-6,
            rope_theta=1_000_000.0,
            max_position_embeddings=40960,
            tie_word_embeddings=False,
            qk_norm=True,
            bos_token_id=BYTE_BOS_ID,
            eos_token_ids=(BYTE_EOS_ID,),
        ),
        # the shape of the tensor-parallel and large-weight decode targets (issues 18, 19): 16 GiB in bf16
        "qwen3-8b-shape": ModelConfig(
            architecture="Qwen3ForCausalLM",
            vocab_size=151936,
            hidden_size=4096,
            intermediate_size=12288,
            num_layers=36,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            rms_norm_eps=1e-6,
            rope_theta=1_000_000.0,
            max_position_embeddings=40960,
            tie_word_embeddings=False,
            qk_norm=True,
            bos_token_id=BYTE_BOS_ID,
            eos_token_ids=(BYTE_EOS_ID,),
        ),
        "llama-3.2-1b-shape": ModelConfig(
            architecture="LlamaForCausalLM",
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_layers=16,
            num_heads=32,
            num_kv_heads=8,
            head_dim=64,
            rms_norm_eps=1e-5,
            rope_theta=500_000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            max_position_embeddings=131072,
            tie_word_embeddings=True,
            bos_token_id=BYTE_BOS_ID,
            eos_token_ids=(BYTE_EOS_ID,),
        ),
    }
)


def preset_config(name: str) -> ModelConfig:
    """The config of a built-in preset (a copy: its rope_scaling dict is the caller's to keep)."""
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}; built-in presets are {sorted(PRESETS)}, or pass a folder"
        )
    config = PRESETS[name]
    scaling = dict(config.rope_scaling) if config.rope_scaling is not None else None
    return dataclasses.replace(config, rope_scaling=scaling)
