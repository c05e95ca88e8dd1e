"""Checkpoints: build a model on its device, fill it from Hugging Face safetensors or seeded noise.

HF stores q/k/v and gate/up as separate tensors; graphrun fuses each group into one Linear (fewer
launches per decode step), so loading maps every HF name onto a row range of one of our parameters.
All names and shapes are checked against the safetensors headers before any data is copied, so a
wrong checkpoint fails fast with the offending tensor named.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from graphrun.errors import ConfigError
from graphrun.llm.checkpoint import CheckpointError, safetensors_files
from graphrun.llm.config import ARCHITECTURES, ModelConfig
from graphrun.llm.layers.attention_backend import AttentionBackend, select_attention_backend
from graphrun.llm.layers.norm import RMSNorm
from graphrun.llm.models.decoder import DecoderLM

logger = logging.getLogger(__name__)

INIT_STD = 0.02
# tensors some checkpoints carry that are derived, not learned: skipped, never an error
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True, slots=True)
class _Target:
    """Where one HF tensor goes: rows [start, end) of one of our parameters (the whole of it if None)."""

    param: nn.Parameter
    start: int | None = None
    end: int | None = None

    def view(self) -> torch.Tensor:
        return self.param if self.start is None else self.param[self.start : self.end]


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
) -> DecoderLM:
    """An inference-mode DecoderLM on `device` in `dtype`, weights uninitialised: follow with
    `load_weights` or `random_init`. Its attention backend is the one given, else the device's
    (select_attention_backend).

    Built on the meta device first, so no memory is spent on a throw-away default init.
    """
    backend = attention_backend if attention_backend is not None else select_attention_backend(device)
    with torch.device("meta"):
        model = DecoderLM(config, backend)
    model = model.to(dtype=resolve_dtype(dtype)).to_empty(device=torch.device(device))
    model.tie_weights()  # to_empty gives every module its own tensors; re-share the embedding
    model.rotary.reset_cache()  # float32 again, after the dtype cast and to_empty
    model.requires_grad_(False)
    return model.eval()


@torch.no_grad()
def random_init(model: DecoderLM, seed: int) -> None:
    """Seeded N(0, 0.02) weights, zero biases, unit norms: the same seed on the same device type gives
    the same model. Uses its own torch.Generator, never the global RNG."""
    device = model.embed_tokens.weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, nn.Linear | nn.Embedding):
            module.weight.normal_(0.0, INIT_STD, generator=generator)
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.zero_()


@torch.no_grad()
def load_weights(model: DecoderLM, folder: str | Path) -> None:
    """Fill every parameter of `model` from the *.safetensors of a HF folder (sharded or single file)."""
    start = time.perf_counter()
    targets = _targets(model)
    index = _tensor_index(safetensors_files(Path(folder)))
    _check_names(targets, index, model.config.tie_word_embeddings)
    by_file: dict[Path, list[str]] = {}
    for name in targets:
        by_file.setdefault(index[name], []).append(name)
    for path, names in by_file.items():
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in names:
                _check_shape(name, targets[name], list(handle.get_slice(name).get_shape()))
            for name in names:
                targets[name].view().copy_(handle.get_tensor(name))
    logger.info("weights: %d tensors from %s in %.1f s", len(targets), folder, time.perf_counter() - start)


def _targets(model: DecoderLM) -> dict[str, _Target]:
    """HF tensor name -> where it goes in `model`; a tied LM head is not listed (it is the embedding)."""
    config = model.config
    q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    qkv_bounds = {"q_proj": (0, q_size), "k_proj": (q_size, q_size + kv_size)}
    qkv_bounds["v_proj"] = (q_size + kv_size, q_size + 2 * kv_size)
    targets: dict[str, _Target] = {}
    for name, param in model.named_parameters():  # shared (tied) parameters are listed once
        hf_name = name if name.startswith("lm_head.") else f"model.{name}"
        prefix, _, kind = hf_name.rpartition(".")  # kind: "weight" or "bias"
        if prefix.endswith("qkv_proj"):
            attn = prefix.removesuffix("qkv_proj")
            for part, (lo, hi) in qkv_bounds.items():
                targets[f"{attn}{part}.{kind}"] = _Target(param, lo, hi)
        elif prefix.endswith("gate_up_proj"):
            mlp, half = prefix.removesuffix("gate_up_proj"), param.shape[0] // 2
            targets[f"{mlp}gate_proj.{kind}"] = _Target(param, 0, half)
            targets[f"{mlp}up_proj.{kind}"] = _Target(param, half, 2 * half)
        else:
            targets[hf_name] = _Target(param)
    return targets


def _tensor_index(files: list[Path]) -> dict[str, Path]:
    """Tensor name -> the file holding it, from the safetensors headers (no data read)."""
    index: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open handles are not mappings)
                index[name] = path
    return index


def _check_names(targets: dict[str, _Target], index: dict[str, Path], tied: bool) -> None:
    """Every expected tensor is present and nothing unknown is: else name the first few offenders."""
    missing = [name for name in targets if name not in index]
    if missing:
        raise CheckpointError(
            f"checkpoint lacks tensor {missing[0]!r} ({len(missing)} missing: {missing[:5]}); "
            "it does not match its config.json"
        )
    allowed = set(targets) | ({"lm_head.weight"} if tied else set())
    unexpected = [name for name in index if name not in allowed and not name.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        raise CheckpointError(
            f"checkpoint has unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected: "
            f"{unexpected[:5]}); graphrun implements {ARCHITECTURES} without extras"
        )


def _check_shape(name: str, target: _Target, got: list[int]) -> None:
    expected = list(target.view().shape)
    if got != expected:
        raise CheckpointError(f"tensor {name!r} has shape {got}, expected {expected} from config.json")
