"""What the tensor-parallel tests run on every rank: a model's logits and greedy tokens over a paged cache.

Two prompts are prefilled as one batch, then decoded a token per sequence per step, eagerly with the
torch attention backend; the cache's blocks are shuffled so block tables matter. Every world size runs
the same code; only the ParallelGroup differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.layers.attention_backend import TorchAttentionBackend
from graphrun.llm.models.decoder import DecoderLM
from graphrun.llm.parallel.group import ParallelGroup
from graphrun.llm.preset_configs import preset_config
from graphrun.llm.weights import build_model, load_weights, random_init, read_model_config

BLOCK_SIZE = 4
NUM_BLOCKS = 16
BLOCKS_PER_SEQ = 6
PROMPT_LENS = (7, 5)
DECODE_STEPS = 6


@dataclass(frozen=True)
class GreedyRun:
    """Logits of the prefill's last rows and of each decode step, each (num_seqs, vocab); the tokens."""

    logits: torch.Tensor  # (1 + DECODE_STEPS, num_seqs, vocab_size)
    tokens: torch.Tensor  # (num_seqs, 1 + DECODE_STEPS)
    weights: dict[str, torch.Tensor]  # this rank's state dict


def tiny_model(group: ParallelGroup, device: str = "cpu") -> DecoderLM:
    model = build_model(preset_config("tiny"), torch.float32, device, TorchAttentionBackend(), group)
    random_init(model, seed=7)
    return model


def checkpoint_model(group: ParallelGroup, folder: Path) -> DecoderLM:
    model = build_model(read_model_config(folder), torch.float32, "cpu", TorchAttentionBackend(), group)
    load_weights(model, folder)
    return model


def run_all(group: ParallelGroup, out: Path, folders: list[Path]) -> None:
    """The rank's runs of the tiny preset and each checkpoint, saved as out/rank{r}.pt."""
    runs = {"tiny": greedy(tiny_model(group))}
    runs |= {folder.name: greedy(checkpoint_model(group, folder)) for folder in folders}
    torch.save(runs, out / f"rank{group.rank}.pt")


@torch.no_grad()
def greedy(model: DecoderLM) -> GreedyRun:
    vocab = model.config.vocab_size
    prompts = [torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(n)) for n in PROMPT_LENS]
    caches, tables, lens = _kv_caches(model), _block_tables(), list(PROMPT_LENS)
    meta = _meta(tables, [0, 0], lens, decode=False)
    positions = torch.cat([torch.arange(n) for n in lens])
    hidden = model(torch.cat(prompts), positions, meta, caches)
    logits = [model.compute_logits(hidden[torch.tensor(lens).cumsum(0) - 1])]
    for _ in range(DECODE_STEPS):
        next_ids = logits[-1].argmax(-1)
        meta = _meta(tables, lens, [n + 1 for n in lens], decode=True)
        logits.append(model.compute_logits(model(next_ids, torch.tensor(lens), meta, caches)))
        lens = [n + 1 for n in lens]
    stacked = torch.stack(logits)
    weights = {name: t.clone() for name, t in model.state_dict().items()}
    return GreedyRun(stacked, stacked.argmax(-1).T, weights)


def _kv_caches(model: DecoderLM) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A cache of this rank's KV heads."""
    shape = (NUM_BLOCKS, BLOCK_SIZE, model.layout.num_kv_heads, model.config.head_dim)
    return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(model.config.num_layers)]


def _block_tables() -> list[list[int]]:
    perm = torch.randperm(NUM_BLOCKS, generator=torch.Generator().manual_seed(0)).tolist()
    return [perm[i * BLOCKS_PER_SEQ : (i + 1) * BLOCKS_PER_SEQ] for i in range(len(PROMPT_LENS))]


def _meta(tables: list[list[int]], starts: list[int], ends: list[int], decode: bool) -> AttentionMetadata:
    """Sequence i writes positions starts[i]..ends[i]-1 and then holds ends[i] tokens."""
    slots = [
        t[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE
        for t, s, e in zip(tables, starts, ends, strict=True)
        for p in range(s, e)
    ]
    slot_mapping = torch.tensor(slots, dtype=torch.int64)
    block_tables = torch.tensor(tables, dtype=torch.int32)
    context_lens = torch.tensor(ends, dtype=torch.int32)
    if decode:
        return AttentionMetadata(slot_mapping, block_tables, context_lens)
    query_start = [0]
    for s, e in zip(starts, ends, strict=True):
        query_start.append(query_start[-1] + e - s)
    return AttentionMetadata(
        slot_mapping, block_tables, context_lens,
        query_start=torch.tensor(query_start, dtype=torch.int32),
        query_start_host=query_start, context_lens_host=list(ends),
    )  # fmt: skip
