"""PIECEWISE graphs of the model body: the work between attentions captured per token rung, attention eager.

Prefill batches of several prompts, continuation chunks (they read earlier chunks from the cache) and
mixed prefill+decode steps have per-step host metadata (chunk lengths, context lengths) that no graph
can hold, so they used to run eager: ~1200 kernel launches a step for a 28-layer model, 22-65 ms of host
time for ~560 tokens against 6.7 ms of GPU work (H200, benchmarks/profile_mixed_step.py). Everything but
attention depends only on the token count, so it is captured once per rung of a token ladder; attention
runs eagerly between the segments over the real tokens' varlen metadata.

The body is cut by hand at each layer's AttentionOp (layers/attention_backend.py): segment 0 is the
embedding and layer 0 up to its K/V store; segment i is layer i-1 after attention and layer i up to its
K/V store; the last segment is the last layer after attention and the final norm. The model's
`before_attention` / `after_attention` halves are the same code the eager forward runs. (graphs/piecewise
finds split points by tracing with torch.fx or torch.export; the model's kernel choice reads shapes and
devices on the host and launches Triton kernels, which neither tracer takes, so the engine names the
splits itself and reuses the rest of that machinery: each rung of one GraphRunner is a PiecewiseBackend
graph whose Segments capture in one pool shared with the decode graphs.)

Inputs are flat per token: token ids, positions, cache slots, each (num_tokens,), padded with zeros
(token 0 at position 0 writing slot 0, inside the scratch block). Output: hidden states (num_tokens,
hidden); the caller gathers the sample rows and runs the LM head and sampling eagerly (a few kernels).

The step's attention metadata is no graph input: `StepContext` (owned here, set by `forward` for the
length of one call) holds it, and the eager attention reads it. It describes the real tokens only, and
is built once per step (the Triton varlen kernel's tile list with it): each layer's attention is one
kernel launch that writes the real rows straight into the static input of the segment after it (the
padding rows keep earlier, finite values; their results are dropped). Without a step (warm-up, capture,
verification) the rows are attended as one fresh causal sequence, so eager and replay agree there too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from prometheus_client import CollectorRegistry
from torch import nn

from graphrun.graphs import GraphRunner
from graphrun.graphs.backends import Backend
from graphrun.graphs.options import Agree, CaptureWhen
from graphrun.graphs.piecewise.backend import PiecewiseBackend
from graphrun.graphs.piecewise.segment import Segment
from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.layers.attention_backend import KVCache
from graphrun.llm.models import DecoderLM
from graphrun.llm.models.decoder import DecoderLayer

log = logging.getLogger(__name__)

DEFAULT_PIECEWISE_RUNGS = (16, 32, 64, 128, 256, 512, 1024, 2048)


def piecewise_ladder(max_tokens: int) -> tuple[int, ...]:
    """The default token ladder up to max_tokens (which becomes the top rung when it falls between)."""
    rungs = [r for r in DEFAULT_PIECEWISE_RUNGS if r < max_tokens]
    return (*rungs, max_tokens) if max_tokens >= 1 else ()


@dataclass(slots=True)
class StepContext:
    """The step a piecewise call runs: its attention metadata over the real tokens, and their count.

    Mutable on purpose (the one per-step state here): set by PiecewiseGraphs.forward for one call.
    meta None: no step (warm-up, capture, verification), the rows are one fresh causal sequence.
    """

    meta: AttentionMetadata | None = None
    num_tokens: int = 0


def decoder_layers(model: DecoderLM) -> list[DecoderLayer]:
    """The model's layers, typed."""
    layers = [layer for layer in model.layers if isinstance(layer, DecoderLayer)]
    assert len(layers) == len(model.layers)
    return layers


class _Head(nn.Module):
    """Segment 0: embedding, then layer 0 up to its K/V store -> (q, residual)."""

    def __init__(self, model: DecoderLM, kv_cache: KVCache) -> None:
        super().__init__()
        self.model = model
        self.layer = decoder_layers(model)[0]
        self.kv_cache = kv_cache

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        hidden = model.embed_tokens(input_ids)  # (num_tokens, hidden)
        rope = model.attention_backend.rope(model.rotary, positions, hidden.dtype)
        q, _, _, residual = self.layer.before_attention(hidden, None, rope, slot_mapping, self.kv_cache)
        return q, residual


class _Between(nn.Module):
    """Segment i: layer i-1 after attention, then layer i up to its K/V store -> (q, residual)."""

    def __init__(self, model: DecoderLM, index: int, kv_cache: KVCache) -> None:
        super().__init__()
        self.model = model
        self.previous, self.layer = decoder_layers(model)[index - 1 : index + 1]
        self.kv_cache = kv_cache

    def forward(
        self, out: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        hidden, residual = self.previous.after_attention(out, residual)
        rope = model.attention_backend.rope(model.rotary, positions, hidden.dtype)
        q, _, _, residual = self.layer.before_attention(hidden, residual, rope, slot_mapping, self.kv_cache)
        return q, residual


class _Tail(nn.Module):
    """The last segment: the last layer after attention, then the final norm -> hidden states."""

    def __init__(self, model: DecoderLM) -> None:
        super().__init__()
        self.model = model
        self.last = decoder_layers(model)[-1]

    def forward(self, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.last.after_attention(out, residual)
        normed: torch.Tensor = self.model.norm(hidden, residual)[0]
        return normed


class PiecewiseBody:
    """The callable each rung captures: segments (Segment modules) with eager attention between them."""

    def __init__(
        self,
        model: DecoderLM,
        kv_caches: Sequence[KVCache],
        backend: PiecewiseBackend,
        context: StepContext,
    ) -> None:
        self._attns = [layer.self_attn.attn for layer in decoder_layers(model)]
        self._kv_caches = kv_caches
        self._context = context
        num_layers = len(model.layers)
        self._head = Segment(_Head(model, kv_caches[0]), "layer0.pre", backend)
        self._between = [
            Segment(_Between(model, i, kv_caches[i]), f"layer{i - 1}.post+layer{i}.pre", backend)
            for i in range(1, num_layers)
        ]
        self._tail = Segment(_Tail(model), f"layer{num_layers - 1}.post+norm", backend)
        device = kv_caches[0][0].device
        self._no_table = torch.zeros(1, 1, dtype=torch.int32, device=device)  # unused by causal_fresh
        self._no_lens = torch.zeros(1, dtype=torch.int32, device=device)
        self.__name__ = "piecewise_body"

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor
    ) -> torch.Tensor:
        """(num_tokens,) ids, positions, slots -> (num_tokens, hidden); K/V written to the cache."""
        q, residual = self._head(input_ids, positions, slot_mapping)
        for i, segment in enumerate(self._between):
            out = self._attend(i, q, slot_mapping, segment)
            q, residual = segment(out, residual, positions, slot_mapping)
        out = self._attend(len(self._between), q, slot_mapping, self._tail)
        hidden: torch.Tensor = self._tail(out, residual)
        return hidden

    def _attend(
        self, index: int, q: torch.Tensor, slot_mapping: torch.Tensor, consumer: Segment
    ) -> torch.Tensor:
        """Layer `index`'s attention, eager, over the step's real tokens. While a rung replays, written
        straight to the static input the consumer segment's graph reads (no copy; the padding rows keep
        earlier values, finite, whose results are dropped); else padded back with zero rows."""
        attn = self._attns[index]
        kv_cache = self._kv_caches[index]
        context = self._context
        if context.meta is None:  # no step: one fresh sequence, K/V read back from their slots
            fresh = AttentionMetadata(slot_mapping, self._no_table, self._no_lens, causal_fresh=True)
            out: torch.Tensor = attn(q, None, None, kv_cache, fresh)
            return out
        n, rows = context.num_tokens, q.shape[0]
        target = consumer.replay_buffer(0)
        if target is not None and target.shape == q.shape:
            return attn(q[:n], None, None, kv_cache, context.meta, target)
        out = attn(q[:n], None, None, kv_cache, context.meta)  # (n, num_heads, head_dim)
        return F.pad(out, (0, 0, 0, 0, 0, rows - n)) if rows > n else out


def random_piecewise_inputs(
    n: int, gen: torch.Generator, vocab_size: int, num_slots: int, first_slot: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Valid inputs for n tokens (capture, verification): distinct slots from first_slot up (the fused
    kernels read this step's K/V back from the cache; padded rows write the scratch block below it)."""
    free = num_slots - first_slot
    slots = first_slot + (torch.randperm(free, generator=gen)[:n] if free >= n else torch.arange(n) % free)
    ids = torch.randint(0, vocab_size, (n,), generator=gen)
    return ids.to(device), torch.arange(n).to(device), slots.to(device)


class PiecewiseGraphs:
    """One GraphRunner over a token ladder whose rungs are piecewise graphs of the model body."""

    def __init__(
        self,
        model: DecoderLM,
        kv_caches: Sequence[KVCache],
        sizes: Sequence[int],
        backend: Backend,
        registry: CollectorRegistry | None = None,
        *,
        capture: CaptureWhen = CaptureWhen.NOW,
        num_slots: int | None = None,
        agree: Agree | None = None,
    ) -> None:
        """capture: now, or later (the engine's background pass); num_slots: capture and verification
        write K/V below this slot only (default: the whole cache; background capture passes the end of
        the blocks held back for it, so no sequence's K/V is touched)."""
        device = kv_caches[0][0].device
        vocab = model.config.vocab_size
        num_blocks, block_size = kv_caches[0][0].shape[:2]
        num_slots = num_blocks * block_size if num_slots is None else num_slots
        self.context = StepContext()
        pieces = PiecewiseBackend(backend)  # segments capture with the shared backend: one pool
        self.body = PiecewiseBody(model, kv_caches, pieces, self.context)

        def draw(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return random_piecewise_inputs(n, gen, vocab, num_slots, block_size, device)

        example = draw(max(sizes), torch.Generator().manual_seed(0))
        start = time.perf_counter()
        # mode "full" with a PiecewiseBackend: each rung's one "graph" is its segment graphs in order
        self.runner = GraphRunner(
            self.body,
            example,
            batch_dims=0,
            sizes=list(sizes),
            backend=pieces,
            name="piecewise",
            registry=registry,
            pad=0,  # token 0 at position 0 in slot 0 (the scratch block)
            verify_inputs=draw,
            capture=capture,
            agree=agree,
        )
        self.capture_seconds = time.perf_counter() - start
        self.sizes = tuple(sizes)
        self.top = max(sizes)
        captured = sum(st.captured for st in self.runner.status())
        log.info(
            "piecewise graphs: %d of %d token sizes captured (%d segments each, up to %d tokens) in %.2f s",
            captured, len(sizes), len(model.layers) + 1, self.top, self.capture_seconds,
        )  # fmt: skip

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """One step's tokens -> hidden states (num_tokens, hidden), a view valid until the next call.

        A step above the top rung runs eager inside the runner (counted as above_top_rung)."""
        with self._step(meta, int(input_ids.shape[0])):
            hidden: torch.Tensor = self.runner(input_ids, positions, meta.slot_mapping)
        return hidden

    @contextlib.contextmanager
    def _step(self, meta: AttentionMetadata, num_tokens: int) -> Iterator[None]:
        context = self.context
        context.meta, context.num_tokens = meta, num_tokens
        try:
            yield
        finally:
            context.meta, context.num_tokens = None, 0
