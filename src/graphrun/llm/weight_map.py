"""Where each Hugging Face tensor goes in a decoder built for one tensor-parallel rank.

HF stores q/k/v and gate/up as separate tensors; graphrun fuses each group into one Linear, so every HF
name maps onto a row range of one of our parameters. Under tensor parallelism the rank reads only its
slice of each tensor (parallel/shards.py): rows of q/k/v, gate/up and the vocabulary, columns of o and
down; the rest (norms) is whole on every rank. The same map fills a model from safetensors (weights.py
reads just the slice) and from seeded noise drawn at full size, so every world size gets the same
full weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from graphrun.llm.config import ModelConfig
from graphrun.llm.parallel.shards import Rows, ShardLayout


@dataclass(frozen=True, slots=True)
class SourceSlice:
    """The part of a full HF tensor this rank reads: [start, end) along dim, of a full extent."""

    dim: int
    start: int
    end: int
    full: int


@dataclass(frozen=True, slots=True)
class WeightTarget:
    """One HF tensor: the rows of our parameter it fills, and the slice of it this rank reads.

    fused_offset: where the tensor's rows start inside our unsplit fused tensor (k_proj after q_proj's
    rows, up_proj after gate_proj's), used when noise is drawn for the fused tensor at full size.
    """

    param: nn.Parameter
    rows: Rows | None = None  # rows of param written; all of them if None
    source: SourceSlice | None = None  # the slice read; the whole tensor if None
    fused_offset: int = 0

    def view(self) -> torch.Tensor:
        return self.param if self.rows is None else self.param[self.rows[0] : self.rows[1]]

    def full_shape(self) -> list[int]:
        """The shape of the whole HF tensor, as its header must state."""
        shape = list(self.view().shape)
        if self.source is not None:
            shape[self.source.dim] = self.source.full
        return shape

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the full HF tensor."""
        s = self.source
        return full if s is None else full.narrow(s.dim, s.start, s.end - s.start)


@dataclass(frozen=True, slots=True)
class WeightMap:
    """HF tensor name -> target, and the HF names this rank holds no part of (rank > 0's row biases)."""

    targets: dict[str, WeightTarget]
    skipped: frozenset[str]


def weight_map(model: nn.Module, config: ModelConfig, layout: ShardLayout) -> WeightMap:
    """The map of `model` (a DecoderLM built with `layout`); a tied LM head is not listed (it is the
    embedding)."""
    targets: dict[str, WeightTarget] = {}
    skipped: set[str] = set()
    for name, param in model.named_parameters():  # shared (tied) parameters are listed once
        hf_name = name if name.startswith("lm_head.") else f"model.{name}"
        prefix, _, kind = hf_name.rpartition(".")  # kind: "weight" or "bias"
        if prefix.endswith("qkv_proj"):
            for part, target in _qkv_targets(param, config, layout).items():
                targets[f"{prefix.removesuffix('qkv_proj')}{part}.{kind}"] = target
        elif prefix.endswith("gate_up_proj"):
            for part, target in _gate_up_targets(param, layout).items():
                targets[f"{prefix.removesuffix('gate_up_proj')}{part}.{kind}"] = target
        else:
            targets[hf_name] = _whole_target(param, prefix, kind, config, layout)
    if config.attention_bias and not layout.holds_row_bias:
        skipped = {f"model.layers.{i}.self_attn.o_proj.bias" for i in range(config.num_layers)}
    return WeightMap(targets, frozenset(skipped))


def _slice(dim: int, rows: Rows, full: int) -> SourceSlice | None:
    """The slice of `rows` along dim; None where that is the whole tensor (one rank)."""
    return None if rows == (0, full) else SourceSlice(dim, rows[0], rows[1], full)


def _qkv_targets(param: nn.Parameter, config: ModelConfig, layout: ShardLayout) -> dict[str, WeightTarget]:
    """q, k, v: this rank's heads of each, stacked [q | k | v] in the fused parameter."""
    q_size, kv_size = layout.num_heads * config.head_dim, layout.num_kv_heads * config.head_dim
    full_q, full_kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    q_rows, kv_rows = layout.q_rows(), layout.kv_rows()
    return {
        "q_proj": WeightTarget(param, (0, q_size), _slice(0, q_rows, full_q), 0),
        "k_proj": WeightTarget(param, (q_size, q_size + kv_size), _slice(0, kv_rows, full_kv), full_q),
        "v_proj": WeightTarget(
            param, (q_size + kv_size, q_size + 2 * kv_size), _slice(0, kv_rows, full_kv), full_q + full_kv
        ),
    }


def _gate_up_targets(param: nn.Parameter, layout: ShardLayout) -> dict[str, WeightTarget]:
    """gate, up: this rank's MLP rows of each, stacked [gate | up] in the fused parameter."""
    half, full = layout.intermediate_size, layout.intermediate_size * layout.parallel.world_size
    source = _slice(0, layout.intermediate_rows(), full)
    return {
        "gate_proj": WeightTarget(param, (0, half), source, 0),
        "up_proj": WeightTarget(param, (half, 2 * half), source, full),
    }


def _whole_target(
    param: nn.Parameter, prefix: str, kind: str, config: ModelConfig, layout: ShardLayout
) -> WeightTarget:
    """A tensor that is one parameter: split by vocabulary rows, by input columns, or whole."""
    if prefix.endswith(("embed_tokens", "lm_head")):
        start, end = layout.vocab_real_rows()
        return WeightTarget(param, (0, end - start), _slice(0, (start, end), layout.vocab_size))
    if kind == "weight" and prefix.endswith("o_proj"):
        return WeightTarget(param, source=_slice(1, layout.q_rows(), config.num_heads * config.head_dim))
    if kind == "weight" and prefix.endswith("down_proj"):
        return WeightTarget(param, source=_slice(1, layout.intermediate_rows(), config.intermediate_size))
    return WeightTarget(param)
