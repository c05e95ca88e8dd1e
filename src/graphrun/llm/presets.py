"""Built-in model shapes with seeded random weights, and the one entry point that loads any model.

A preset has the architecture and size of a real checkpoint but needs no download: everything
(tests, benchmarks, the server) runs offline. Its logits are noise, yet its cost per step is that of
the real model, which is what graph capture and benchmarks care about. The shapes themselves live in
preset_configs.py (no torch there, for the CLI's checks); this module builds the models.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from graphrun.errors import ConfigError
from graphrun.llm.config import ModelConfig
from graphrun.llm.layers.attention_backend import AttentionBackend
from graphrun.llm.models.decoder import DecoderLM
from graphrun.llm.parallel.group import ParallelGroup
from graphrun.llm.preset_configs import PRESETS, preset_config
from graphrun.llm.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from graphrun.llm.weights import build_model, load_weights, random_init, read_model_config

logger = logging.getLogger(__name__)

__all__ = ["PRESETS", "load_model", "preset_config"]


def load_model(
    name_or_path: str | Path,
    dtype: torch.dtype | str,
    device: torch.device | str,
    seed: int = 0,
    attention_backend: AttentionBackend | None = None,
    group: ParallelGroup | None = None,
) -> tuple[DecoderLM, Tokenizer, ModelConfig]:
    """A model ready to run, its tokenizer and config, from a preset name or a local HF folder.

    attention_backend: the attention kernels; by default the device's (select_attention_backend).
    group: the tensor-parallel rank to build (its shard of every layer); one rank by default.

    A preset gets seeded random weights (`seed`) and a ByteTokenizer sized to its vocabulary; a folder
    gets its config.json, *.safetensors and tokenizer.json. An existing folder wins over a preset of the
    same name.
    """
    path = Path(name_or_path)
    if str(name_or_path) in PRESETS and not path.is_dir():
        config = preset_config(str(name_or_path))
        model = build_model(config, dtype, device, attention_backend, group)
        random_init(model, seed)
        logger.info("model: preset %s, random weights (seed %d), %s on %s", name_or_path, seed, dtype, device)
        return model, ByteTokenizer(config.vocab_size), config
    if not path.is_dir():
        raise ConfigError(
            f"{name_or_path!r} is neither a built-in preset ({sorted(PRESETS)}) nor an existing folder"
        )
    config = read_model_config(path)
    tokenizer = load_tokenizer(path)
    model = build_model(config, dtype, device, attention_backend, group)
    load_weights(model, path)
    logger.info("model: %s from %s, %s on %s", config.architecture, path, dtype, device)
    return model, tokenizer, config
