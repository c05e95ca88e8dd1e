"""What makes a folder a checkpoint graphrun can load, checked from file names and config.json alone.

A Hugging Face folder needs config.json (an architecture graphrun implements), tokenizer.json and its
*.safetensors (every shard its index lists). weights.py reads the tensors; this module only looks at
which files exist, without torch, so `graphrun serve --model PATH` can refuse a wrong folder in
milliseconds instead of after the engine has started.
"""

from __future__ import annotations

import json
from pathlib import Path

from graphrun.errors import ConfigError
from graphrun.llm.config import ModelConfig

INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"


class CheckpointError(ConfigError):
    """A checkpoint folder is missing, incomplete, or does not fit the model built from its config."""


def safetensors_files(folder: Path) -> list[Path]:
    """The shards an index lists, else every *.safetensors in the folder."""
    if not folder.is_dir():
        raise CheckpointError(
            f"checkpoint folder {folder} does not exist; pass a local Hugging Face model folder"
        )
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        weight_map: dict[str, str] = json.loads(index_path.read_text()).get("weight_map", {})
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [path.name for path in files if not path.is_file()]
        if missing:
            raise CheckpointError(
                f"{index_path} lists shards {missing} that are not in {folder}; re-download them"
            )
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"no *.safetensors files in {folder}; graphrun loads safetensors checkpoints only"
        )
    return files


def read_checkpoint_config(folder: Path) -> ModelConfig:
    """The ModelConfig of a loadable folder; a CheckpointError (or UnsupportedModelError) naming the gap.

    Checks config.json (present, valid JSON, a supported architecture), tokenizer.json and the
    safetensors files, in that order; the tensors' names and shapes are left to weights.py.
    """
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"no config.json in {folder}: expected a Hugging Face checkpoint folder")
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {config_path}: {exc}") from exc
    try:
        config = ModelConfig.from_hf_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise CheckpointError(f"{config_path} lacks or mangles a field graphrun needs: {exc!r}") from exc
    if not (folder / TOKENIZER_FILE).is_file():
        raise CheckpointError(
            f"no {TOKENIZER_FILE} in {folder}; graphrun reads fast-tokenizer files only "
            "(save one with transformers' tokenizer.save_pretrained)"
        )
    safetensors_files(folder)
    return config
