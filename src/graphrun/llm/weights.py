"""Checkpoints: build a model on its device, fill it from Hugging Face safetensors or seeded noise.

HF stores q/k/v and gate/up as separate tensors; graphrun fuses each group into one Linear (fewer
launches per decode step), so loading maps every HF name onto a row range of one of our parameters
(weight_map.py); a tensor-parallel rank reads only its slice of each tensor. All names and shapes are
checked against the safetensors headers before any data is copied, so a wrong checkpoint fails fast
with the offending tensor named.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from graphrun.errors import ConfigError
from graphrun.llm.checkpoint import CheckpointError, safetensors_files
from graphrun.llm.config import ARCHITECTURES, ModelConfig
from graphrun.llm.layers.attention_backend import AttentionBackend, select_attention_backend
from graphrun.llm.layers.norm import RMSNorm
from graphrun.llm.models.decoder import DecoderLM
from graphrun.llm.parallel.group import ParallelGroup
from graphrun.llm.weight_map import WeightTarget, weight_map

logger = logging.getLogger(__name__)

INIT_STD = 0.02
# tensors some checkpoints carry that are derived, not learned: skipped, never an error
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from itself or its name ("bfloat16", "torch.float16")."""
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ConfigError(
            f"dtype {dtype!r} is not a torch dtype; use e.g. 'bfloat16', 'float16' or 'float32'"
        )
    return resolved


def read_model_config(folder: str | Path) -> ModelConfig:
    """ModelConfig of a HF folder (a CheckpointError when config.json is missing)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no config.json in {folder}: expected a Hugging Face checkpoint folder")
    return ModelConfig.from_hf_dict(json.loads(path.read_text()))


def build_model(
    config: ModelConfig,
    dtype: torch.dtype | str,
    device: torch.device | str,
    attention_backend: AttentionBackend | None = None,
    group: ParallelGroup | None = None,
) -> DecoderLM:
    """An inference-mode DecoderLM on `device` in `dtype`, weights uninitialised: follow with
    `load_weights` or `random_init`. Its attention backend is the one given, else the device's
    (select_attention_backend); group: the tensor-parallel rank it is built for (one rank by default).

    Built on the meta device first, so no memory is spent on a throw-away default init.
    """
    backend = attention_backend if attention_backend is not None else select_attention_backend(device)
    with torch.device("meta"):
        model = DecoderLM(config, backend, group)
    model = model.to(dtype=resolve_dtype(dtype)).to_empty(device=torch.device(device))
    model.tie_weights()  # to_empty gives every module its own tensors; re-share the embedding
    model.rotary.reset_cache()  # float32 again, after the dtype cast and to_empty
    model.requires_grad_(False)
    return model.eval()


@torch.no_grad()
def random_init(model: DecoderLM, seed: int) -> None:
    """Seeded N(0, 0.02) weights, zero biases, unit norms: the same seed on the same device type gives
    the same model, at every tensor-parallel size (each weight is drawn whole, then the rank keeps its
    slice). Uses its own torch.Generator, never the global RNG."""
    generator = torch.Generator(device=model.embed_tokens.weight.device).manual_seed(seed)
    targets: dict[int, list[WeightTarget]] = {}  # id of a parameter -> the HF tensors it holds
    for target in weight_map(model, model.config, model.layout).targets.values():
        targets.setdefault(id(target.param), []).append(target)
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, nn.Linear | nn.Embedding):
            weight, parts = module.weight, targets[id(module.weight)]
            full = torch.empty(_full_shape(parts), dtype=weight.dtype, device=weight.device)
            full.normal_(0.0, INIT_STD, generator=generator)  # the draw of the unsplit model
            _scatter(full, parts)
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.zero_()
    _zero_vocab_padding(model)


def _full_shape(parts: list[WeightTarget]) -> list[int]:
    """The shape of a weight in the unsplit model: the HF tensors it fuses (parts), stacked by rows."""
    return [sum(part.full_shape()[0] for part in parts), *parts[0].full_shape()[1:]]


def _scatter(full: torch.Tensor, parts: list[WeightTarget]) -> None:
    """Copy this rank's slice of each HF tensor within the unsplit fused weight `full` into its rows."""
    for part in parts:
        rows = full.narrow(0, part.fused_offset, part.full_shape()[0])
        part.view().copy_(part.take(rows))


def _zero_vocab_padding(model: DecoderLM) -> None:
    """Zero the embedding / LM head rows past the vocabulary (the last rank's padding)."""
    start, end = model.layout.vocab_real_rows()
    for param in (model.embed_tokens.weight, model.lm_head.weight):
        param[end - start :].zero_()


@torch.no_grad()
def load_weights(model: DecoderLM, folder: str | Path) -> None:
    """Fill every parameter of `model` from the *.safetensors of a HF folder (sharded or single file);
    a tensor-parallel rank reads only its slice of each tensor."""
    start = time.perf_counter()
    mapping = weight_map(model, model.config, model.layout)
    targets = mapping.targets
    index = _tensor_index(safetensors_files(Path(folder)))
    _check_names(targets, index, model.config.tie_word_embeddings, mapping.skipped)
    by_file: dict[Path, list[str]] = {}
    for name in targets:
        by_file.setdefault(index[name], []).append(name)
    for path, names in by_file.items():
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in names:
                _check_shape(name, targets[name], list(handle.get_slice(name).get_shape()))
            for name in names:
                targets[name].view().copy_(_read(handle, name, targets[name]))
    _zero_vocab_padding(model)
    logger.info("weights: %d tensors from %s in %.1f s", len(targets), folder, time.perf_counter() - start)


def _read(handle: Any, name: str, target: WeightTarget) -> torch.Tensor:
    """The tensor, or only this rank's slice of it (read from the file, not cut from a full copy)."""
    source = target.source
    if source is None:
        tensor: torch.Tensor = handle.get_tensor(name)
        return tensor
    index = (slice(None),) * source.dim + (slice(source.start, source.end),)
    part: torch.Tensor = handle.get_slice(name)[index]
    return part


def _tensor_index(files: list[Path]) -> dict[str, Path]:
    """Tensor name -> the file holding it, from the safetensors headers (no data read)."""
    index: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open handles are not mappings)
                index[name] = path
    return index


def _check_names(
    targets: dict[str, WeightTarget], index: dict[str, Path], tied: bool, skipped: frozenset[str]
) -> None:
    """Every expected tensor is present and nothing unknown is: else name the first few offenders."""
    missing = [name for name in targets if name not in index]
    if missing:
        raise CheckpointError(
            f"checkpoint lacks tensor {missing[0]!r} ({len(missing)} missing: {missing[:5]}); "
            "it does not match its config.json"
        )
    allowed = set(targets) | skipped | ({"lm_head.weight"} if tied else set())
    unexpected = [name for name in index if name not in allowed and not name.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        raise CheckpointError(
            f"checkpoint has unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected: "
            f"{unexpected[:5]}); graphrun implements {ARCHITECTURES} without extras"
        )


def _check_shape(name: str, target: WeightTarget, got: list[int]) -> None:
    expected = target.full_shape()
    if got != expected:
        raise CheckpointError(f"tensor {name!r} has shape {got}, expected {expected} from config.json")
