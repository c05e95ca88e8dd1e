"""A checkpoint folder of the tiny preset's architecture, for tests that serve a model from a folder.

config.json, model.safetensors (seeded random weights under Hugging Face names) and a word-level
tokenizer.json whose vocabulary covers every model id, so any generated token decodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from graphrun.bench.peers import hf_state_dict
from graphrun.llm.presets import preset_config
from graphrun.llm.weights import build_model, random_init


def write_tiny_checkpoint(folder: Path) -> Path:
    """Write the checkpoint into `folder` (created) and return it."""
    config = preset_config("tiny")
    model = build_model(config, torch.float32, "cpu")
    random_init(model, seed=0)
    folder.mkdir(parents=True)
    tensors = {name: t.detach().clone().contiguous() for name, t in hf_state_dict(model).items()}
    save_file(tensors, str(folder / "model.safetensors"))
    raw = {
        "architectures": [config.architecture],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(raw))
    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, config.vocab_size)}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder
