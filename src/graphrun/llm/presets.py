"""Built-in model shapes with seeded random weights, and the one entry point that loads any model.

A preset has the architecture and size of a real checkpoint but needs no download: everything
(tests, benchmarks, the server) runs offline. Its logits are noise, yet its cost per step is that of
the real model, which is what graph capture and benchmarks care about. Presets pair with the
ByteTokenizer, so their special ids are its bos (256) and eos (257).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from types import MappingProxyType

import torch

from graphrun.errors import ConfigError
from graphrun.llm.config import ModelConfig
from graphrun.llm.models.decoder import DecoderLM
from graphrun.llm.tokenizer import BYTE_BOS_ID, BYTE_EOS_ID, ByteTokenizer, Tokenizer, load_tokenizer
from graphrun.llm.weights import build_model, load_weights, random_init, read_model_config

logger = logging.getLogger(__name__)

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


def load_model(
    name_or_path: str | Path, dtype: torch.dtype | str, device: torch.device | str, seed: int = 0
) -> tuple[DecoderLM, Tokenizer, ModelConfig]:
    """A model ready to run, its tokenizer and config, from a preset name or a local HF folder.

    A preset gets seeded random weights (`seed`) and a ByteTokenizer sized to its vocabulary; a folder
    gets its config.json, *.safetensors and tokenizer.json. An existing folder wins over a preset of the
    same name.
    """
    path = Path(name_or_path)
    if str(name_or_path) in PRESETS and not path.is_dir():
        config = preset_config(str(name_or_path))
        model = build_model(config, dtype, device)
        random_init(model, seed)
        logger.info("model: preset %s, random weights (seed %d), %s on %s", name_or_path, seed, dtype, device)
        return model, ByteTokenizer(config.vocab_size), config
    if not path.is_dir():
        raise ConfigError(
            f"{name_or_path!r} is neither a built-in preset ({sorted(PRESETS)}) nor an existing folder"
        )
    config = read_model_config(path)
    tokenizer = load_tokenizer(path)
    model = build_model(config, dtype, device)
    load_weights(model, path)
    logger.info("model: %s from %s, %s on %s", config.architecture, path, dtype, device)
    return model, tokenizer, config
