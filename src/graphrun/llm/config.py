"""Model architecture, read from a Hugging Face config.json or a built-in preset.

One frozen dataclass: the fields the Llama and Qwen3 families need and nothing else. Unknown
architectures are rejected here, with the list of supported ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphrun.errors import ConfigError

ARCHITECTURES = ("LlamaForCausalLM", "Qwen3ForCausalLM")


class UnsupportedModelError(ConfigError):
    """The checkpoint's architecture or settings are not ones graphrun implements."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Decoder shape and numerics (the subset of a HF config the two families use)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm on each head of q and k before rotary
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise UnsupportedModelError(
                f"architecture {self.architecture!r} is not supported; graphrun implements {ARCHITECTURES}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "head_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Build from the contents of a Hugging Face config.json (transformers 4 or 5 layout)."""
        raw = _with_top_level_rope_keys(raw)
        archs = raw.get("architectures") or []
        arch = archs[0] if archs else raw.get("model_type", "?")
        if arch not in ARCHITECTURES:
            raise UnsupportedModelError(
                f"architecture {arch!r} is not supported; graphrun implements {ARCHITECTURES}"
            )
        heads = int(raw["num_attention_heads"])
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        dtype = raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"
        return cls(
            architecture=arch,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or raw["hidden_size"] // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            rope_scaling=raw.get("rope_scaling"),
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=bool(raw.get("attention_bias", False)),
            qk_norm=arch == "Qwen3ForCausalLM",
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            dtype=str(dtype).removeprefix("torch."),
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> ModelConfig:
        """Read config.json from a local checkpoint folder."""
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise ConfigError(f"no config.json in {folder}: expected a Hugging Face checkpoint folder")
        return cls.from_hf_dict(json.loads(path.read_text()))


def _with_top_level_rope_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """transformers >= 5 writes rope_theta and the scaling inside `rope_parameters`; lift them out."""
    params = raw.get("rope_parameters")
    if not isinstance(params, dict) or "rope_theta" in raw:
        return raw
    scaling = {key: value for key, value in params.items() if key != "rope_theta"}
    is_default = scaling.get("rope_type", scaling.get("type", "default")) == "default"
    return {
        **raw,
        "rope_theta": params.get("rope_theta", 10000.0),
        "rope_scaling": raw.get("rope_scaling") or (None if is_default else scaling),
    }
