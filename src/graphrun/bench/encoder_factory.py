"""The BERT-large-shaped masked encoder as a served model, in buckets over batch x length.

    graphrun serve --module graphrun.bench.encoder_factory:bert_large            # GPU, float16
    graphrun serve --module graphrun.bench.encoder_factory:bert_large --enforce-eager   # the baseline
    graphrun serve --module graphrun.bench.encoder_factory:small --graph-backend sim   # CPU smoke

Issue 16's target, ">= 3x eager at concurrency 1 (short inputs)", is this model served twice, with graphs
and with --enforce-eager, each sent one short request at a time (`graphrun bench infer` drives
/v1/infer); benchmarks/encoder_buckets.py measures the same model and ladder in process, without HTTP.
Every factory returns only the pooled embedding (batch, hidden), what an embedding server answers: the
per-token states of BERT-large are 1024 floats a token, and encoding them as JSON would weigh on both
sides alike and hide the runner's difference; `*_tokens` factories return them as well.

Weights are random and seeded (graphrun.bench.models): replay speed depends on shapes, not values. The
model runs on CUDA in float16 when there is a device, else on the CPU in float32. The one bench module
that imports from graphrun.serve (a served model's declaration, no HTTP): the server imports it through
--module, nothing in bench imports it.
"""

from __future__ import annotations

import torch
from torch import nn

from graphrun.bench.models import MaskedEncoder, masked_encoder
from graphrun.serve.infer.dims import DynamicDim
from graphrun.serve.infer.source import ModelSource

LENGTH_RUNGS = (16, 32, 64, 128)  # benchmarks/encoder_buckets.py's default ladder
EXAMPLE_LENGTH = 16


class Pooled(nn.Module):
    """The encoder's pooled output alone: {"pooled": (batch, hidden)}."""

    def __init__(self, encoder: MaskedEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pooled": self.encoder(input_ids, attention_mask)["pooled"]}


def encoder_source(small: bool, tokens: bool) -> ModelSource:
    """The masked encoder as a ModelSource: a `length` dim on input_ids and attention_mask (the mask),
    rungs LENGTH_RUNGS, pad id 0; tokens: also return the per-token states ("hidden", follows length)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    encoder = masked_encoder(small).to(device=device, dtype=dtype).eval().requires_grad_(False)
    model: nn.Module = encoder if tokens else Pooled(encoder)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, encoder.tokens.num_embeddings, (1, EXAMPLE_LENGTH), generator=gen).to(device)
    example = (("input_ids", ids), ("attention_mask", torch.ones_like(ids)))
    length = DynamicDim("length", {"input_ids": 1, "attention_mask": 1}, LENGTH_RUNGS, pad_value=0)
    name = ("small" if small else "bert-large") + ("-tokens" if tokens else "")
    return ModelSource(model, example, keywords=True, dims=(length,), mask="attention_mask", name=name)


def bert_large() -> ModelSource:
    """BERT-large shape (24 layers, hidden 1024): the pooled embedding."""
    return encoder_source(small=False, tokens=False)


def bert_large_tokens() -> ModelSource:
    """BERT-large shape: the pooled embedding and the per-token states."""
    return encoder_source(small=False, tokens=True)


def small() -> ModelSource:
    """2 layers, hidden 64 (CPU smoke): the pooled embedding."""
    return encoder_source(small=True, tokens=False)


def small_tokens() -> ModelSource:
    """2 layers, hidden 64: the pooled embedding and the per-token states."""
    return encoder_source(small=True, tokens=True)
