"""What the graph tests run on every rank: the tiny preset's decode step through a GraphRunner.

On the CPU (gloo) the graphs are the sim backend's; with device "cuda" (NCCL, rank r on GPU r) they are
CUDA graphs.

The step (ids, positions, slots, block tables, context lengths -> full-vocabulary logits) holds the
model's all-reduces and its logits all-gather, so each rank's graphs hold its collectives. Each rank also
runs the unsplit model (ParallelGroup.single(), the same seeded weights) on the same inputs, as the
reference. Results are saved as out/rank{r}.pt for the test process to check.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from prometheus_client import CollectorRegistry
from tp_greedy import tiny_model

from graphrun.graphs import GraphRunner
from graphrun.graphs.backends.sim import SimBackend
from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.models.decoder import DecoderLM
from graphrun.llm.parallel.group import ParallelGroup

SIZES = [1, 2, 4]
BLOCK_SIZE = 4
BLOCKS_PER_SEQ = 4
NUM_BLOCKS = SIZES[-1] * BLOCKS_PER_SEQ + 1
CALL_SIZES = (1, 3, 4, 2, 4)  # the last 4 follows another 4 on new inputs: replay must re-run everything


def decode_inputs(
    n: int, generator: torch.Generator, vocab_size: int, device: str = "cpu"
) -> list[torch.Tensor]:
    """Valid decode inputs for n sequences: ids, positions, slots, block tables, context lengths."""
    ids = torch.randint(0, vocab_size, (n,), generator=generator)
    context_lens = torch.randint(1, BLOCK_SIZE * BLOCKS_PER_SEQ + 1, (n,), generator=generator)
    perm = torch.randperm(NUM_BLOCKS - 1, generator=generator)[: n * BLOCKS_PER_SEQ] + 1
    tables = perm.view(n, BLOCKS_PER_SEQ).to(torch.int32)
    positions = context_lens - 1
    slots = tables.long().gather(1, (positions // BLOCK_SIZE).unsqueeze(1)).squeeze(1) * BLOCK_SIZE
    slots += positions % BLOCK_SIZE
    return [t.to(device) for t in (ids, positions, slots, tables, context_lens.to(torch.int32))]


class DecodeStep:
    """The step over a cache of this rank's KV heads, sliced from one seeded full-head cache, so every
    world size reads the same values; reset() refills it in place (graphs keep its addresses).
    noisy_at: add fresh noise at that batch size (a replay then differs from eager: verification fails).
    couple: add a little of the batch's mean to every row (a padded replay then differs from eager)."""

    def __init__(self, model: DecoderLM, noisy_at: int | None = None, couple: bool = False) -> None:
        self.model, self.noisy_at, self.couple = model, noisy_at, couple
        shape = (NUM_BLOCKS, BLOCK_SIZE, model.layout.num_kv_heads, model.config.head_dim)
        device = model.embed_tokens.weight.device
        self.caches = [
            (torch.empty(shape, device=device), torch.empty(shape, device=device))
            for _ in range(model.config.num_layers)
        ]
        self.reset()

    def reset(self) -> None:
        generator = torch.Generator().manual_seed(3)
        full = (NUM_BLOCKS, BLOCK_SIZE, self.model.config.num_kv_heads, self.model.config.head_dim)
        heads = slice(
            self.model.layout.kv_head_start, self.model.layout.kv_head_start + self.model.layout.num_kv_heads
        )
        for k, v in self.caches:
            k.copy_(torch.randn(full, generator=generator)[:, :, heads])
            v.copy_(torch.randn(full, generator=generator)[:, :, heads])

    def __call__(self, ids: Any, positions: Any, slots: Any, tables: Any, context_lens: Any) -> torch.Tensor:
        meta = AttentionMetadata(slots, tables, context_lens)
        logits = self.model.compute_logits(self.model(ids, positions, meta, self.caches))
        if self.noisy_at is not None and ids.shape[0] == self.noisy_at:
            logits = logits + torch.rand_like(logits) * 1e-2
        if self.couple:
            logits = logits + 1e-2 * logits.mean(0, keepdim=True)
        return logits


def runner(step: DecodeStep, vocab: int, group: ParallelGroup, device: str, **options: Any) -> GraphRunner:
    """Sim graphs on the CPU, CUDA graphs on a GPU; the ranks' verdicts joined by group.agree."""
    example = decode_inputs(SIZES[-1], torch.Generator().manual_seed(1), vocab, device)
    backend = SimBackend() if device == "cpu" else "cuda"
    return GraphRunner(
        step, example, sizes=SIZES, backend=backend, registry=CollectorRegistry(),
        verify_inputs=lambda n, g: decode_inputs(n, g, vocab, device), agree=group.agree, **options,
    )  # fmt: skip


@torch.inference_mode()
def replay_vs_eager(group: ParallelGroup, out: Path, device: str = "cpu") -> None:
    """Per call: the runner's logits, eager TP logits and TP=1 logits; and the runner's status."""
    model = tiny_model(group, device)
    vocab = model.config.vocab_size
    step, single = DecodeStep(model), DecodeStep(tiny_model(ParallelGroup.single(), device))
    graphs = runner(step, vocab, group, device)
    calls = []
    for i, n in enumerate(CALL_SIZES):
        inputs = decode_inputs(n, torch.Generator().manual_seed(100 + i), vocab, device)
        step.reset()
        eager = step(*inputs)
        step.reset()
        single.reset()
        calls.append((graphs(*inputs).clone().cpu(), eager.cpu(), single(*inputs).cpu()))
    status = [(s.size, s.captured, s.reason) for s in graphs.status()]
    torch.save({"calls": calls, "status": status, "replayed": graphs.stats.num_replayed},
               out / f"rank{group.rank}.pt")  # fmt: skip


@torch.inference_mode()
def rank_one_fails(group: ParallelGroup, out: Path, how: str, device: str = "cpu") -> None:
    """Rank 1 alone fails: verification at rung 4 ("verify"), every rung's memory budget ("budget"), or
    the padded check of rung 4, which serves 3 ("couple")."""
    warnings = _capture_warnings()
    model = tiny_model(group, device)
    vocab = model.config.vocab_size
    rank_one = group.rank == 1
    noisy_at = 4 if how == "verify" and rank_one else None
    budget = 1 if how == "budget" and rank_one else 2**34  # every rank checks a budget (it runs the body)
    step, single = (
        DecodeStep(model, noisy_at, how == "couple" and rank_one),
        DecodeStep(tiny_model(ParallelGroup.single(), device)),
    )
    graphs = runner(step, vocab, group, device, memory_budget_bytes=budget)
    calls = []
    for i, n in enumerate(CALL_SIZES):
        inputs = decode_inputs(n, torch.Generator().manual_seed(200 + i), vocab, device)
        step.reset()
        single.reset()
        calls.append((n, graphs(*inputs).clone().cpu(), single(*inputs).cpu()))
    torch.save({
        "calls": calls,
        "status": [(s.size, s.captured, s.reason) for s in graphs.status()],
        "failed": dict(graphs.stats.capture_failed),
        "fallback": dict(graphs.stats.eager_fallback),
        "warnings": warnings,
    }, out / f"rank{group.rank}.pt")  # fmt: skip


def _capture_warnings() -> list[str]:
    """The runner's warning lines, as they are logged (the list fills as they come)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("graphrun.graphs.runner")
    logger.addHandler(Collect(logging.WARNING))
    return lines


@torch.inference_mode()
def sim_collectives(group: ParallelGroup, out: Path) -> None:
    """A sim graph of the group's all-reduce and all-gather and of a plain dist.all_reduce, replayed on
    new inputs: the outputs of capture and of the replay."""
    x, summed, gathered, plain = torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 6), torch.zeros(2, 3)

    def body() -> None:
        summed.copy_(group.all_reduce(x * 2))
        gathered.copy_(group.all_gather(x + group.rank))
        y = x * 3
        dist.all_reduce(y, group=group.process_group)
        plain.copy_(y)

    backend = SimBackend()
    backend.register_static([x, summed, gathered, plain])
    x.fill_(group.rank + 1)
    graph = backend.capture(body)
    captured = [t.clone() for t in (summed, gathered, plain)]
    x.fill_(10 * (group.rank + 1))
    graph.replay()
    torch.save({"captured": captured, "replayed": [summed, gathered, plain]}, out / f"rank{group.rank}.pt")
