"""Fresh prefill through captured graphs: one sequence's prompt (or first chunk), padded to a token rung.

A prompt that starts at position 0 needs no cache read: attention is causal over its own tokens
(`AttentionMetadata.causal_fresh`), so a whole prefill is a fixed-shape computation once its token count
is padded to a rung of a token ladder (16, 32, 48, 64, 96, ... up to max_num_batched_tokens). Padded rows
are zeros: token 0 at position 0 writing its K/V to slot 0, inside the scratch block, and causality keeps
them from touching a real row. Eager prefill of a launch-bound model costs milliseconds of host work per
prompt; a replay costs microseconds, and a serving engine's running streams stop waiting on it.

Inputs, all static tensors:
  tokens (num_tokens, 3) int64: token id, position, cache slot (the batched input; padded with zeros);
  seq    (3,) int64: index of the row to sample (the last real token), sampling seed, last_tokens row;
  floats (3,) float32: temperature, top-p, top-k.
The graph samples in-graph and writes the token into last_tokens[seq[2]] (the next step's feed).
Continuation chunks of a long prompt (they read earlier chunks from the cache) run eager.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from prometheus_client import CollectorRegistry

from graphrun.graphs import GraphRunner
from graphrun.graphs.backends import Backend
from graphrun.graphs.options import CaptureWhen
from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.models import DecoderLM
from graphrun.llm.sampler import SamplingTensors, sample
from graphrun.llm.transfer import to_device

log = logging.getLogger(__name__)

DEFAULT_PREFILL_RUNGS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


def prefill_ladder(max_tokens: int) -> tuple[int, ...]:
    """The default token ladder up to max_tokens (which becomes the top rung when it falls between)."""
    rungs = [r for r in DEFAULT_PREFILL_RUNGS if r < max_tokens]
    return (*rungs, max_tokens) if max_tokens >= 1 else ()


class PrefillStep:
    """The callable the prefill graphs capture: one fresh sequence's tokens -> its sampled token (1,)."""

    def __init__(
        self,
        model: DecoderLM,
        kv_caches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        last_tokens: torch.Tensor,
    ) -> None:
        self._model = model
        self._kv_caches = kv_caches
        self._last_tokens = last_tokens
        device = last_tokens.device
        self._no_table = torch.zeros(1, 1, dtype=torch.int32, device=device)  # unused by causal_fresh
        self._no_lens = torch.zeros(1, dtype=torch.int32, device=device)

    def __call__(self, tokens: torch.Tensor, seq: torch.Tensor, floats: torch.Tensor) -> torch.Tensor:
        """(n, 3) int64, (3,) int64, (3,) float32 -> (1,) int64; also writes last_tokens[seq[2]]."""
        positions = tokens[:, 1]
        meta = AttentionMetadata(
            slot_mapping=tokens[:, 2],
            block_tables=self._no_table,
            context_lens=self._no_lens,
            causal_fresh=True,
        )
        hidden = self._model(tokens[:, 0], positions, meta, self._kv_caches)
        # clamped: a rung's warm-up runs on whatever the shared static `seq` holds from a larger rung
        row = seq[0:1].clamp(max=tokens.shape[0] - 1)
        logits = self._model.compute_logits(hidden.index_select(0, row))
        params = SamplingTensors(
            temperature=floats[0:1], top_p=floats[1:2], top_k=floats[2:3].to(torch.int32), seeds=seq[1:2]
        )
        token = sample(logits, params, positions.index_select(0, row))
        self._last_tokens.index_copy_(0, seq[2:3], token)
        return token


def random_prefill_inputs(
    n: int,
    gen: torch.Generator,
    vocab_size: int,
    num_slots: int,
    feed_row: int,
    device: torch.device,
    first_slot: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Valid inputs for n tokens (capture, verification), each token in its own cache slot.

    Distinct slots matter: the fused path reads this step's K/V back from the cache, so two tokens
    sharing a slot would make eager and replay disagree. Slots are drawn from first_slot up: passing the
    first slot after the scratch block keeps real rows apart from padded rows (which write slot 0), as
    in serving, so the padded check compares like with like. Any other slot will do at start-up, before
    any request holds a block; a background capture draws from blocks the engine reserved for it. A
    cache smaller than n tokens reuses slots (that rung may then fail verification and run eager, logged).
    """
    free = num_slots - first_slot
    slots = first_slot + (torch.randperm(free, generator=gen)[:n] if free >= n else torch.arange(n) % free)
    tokens = torch.stack(
        [torch.randint(0, vocab_size, (n,), generator=gen), torch.arange(n), slots],
        dim=1,
    )
    seq = torch.tensor([int(torch.randint(0, n, (1,), generator=gen)), 12345, feed_row])
    floats = torch.tensor([float(torch.rand(1, generator=gen)) + 0.1, 0.9, 20.0])
    return tokens.to(device), seq.to(device), floats.to(device)


class PrefillGraphs:
    """One GraphRunner over a token ladder, sharing the decode graphs' backend (one memory pool)."""

    def __init__(
        self,
        model: DecoderLM,
        kv_caches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        last_tokens: torch.Tensor,
        sizes: Sequence[int],
        backend: str | Backend,
        registry: CollectorRegistry | None = None,
        *,
        compile: bool = False,
        compile_cache_dir: str | None = None,
        capture: CaptureWhen = CaptureWhen.NOW,
        num_slots: int | None = None,
    ) -> None:
        """num_slots: capture and verification write K/V below this slot only (default: the whole
        cache). A background capture runs beside live sequences, so it passes the end of the blocks the
        engine reserved for it."""
        device = last_tokens.device
        self._device = device
        vocab, dummy_row = model.config.vocab_size, last_tokens.shape[0] - 1
        num_blocks, block_size = kv_caches[0][0].shape[:2]
        num_slots = num_blocks * block_size if num_slots is None else num_slots

        def draw(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # real rows stay out of the scratch block (block 0), where padded rows write
            return random_prefill_inputs(n, gen, vocab, num_slots, dummy_row, device, first_slot=block_size)

        example = draw(max(sizes), torch.Generator().manual_seed(0))
        example[1][0] = 0  # the sampled row must exist at every rung: the static inputs start from this
        start = time.perf_counter()
        self.runner = GraphRunner(
            PrefillStep(model, kv_caches, last_tokens),
            example,
            batch_dims=(0, None, None),
            sizes=list(sizes),
            backend=backend,
            name="prefill",
            registry=registry,
            compile=compile,
            compile_cache_dir=compile_cache_dir,
            capture=capture,
            pad=0,  # token 0 at position 0 in slot 0 (the scratch block)
            verify_inputs=draw,  # called with each rung's size and with smaller, padded sizes
        )
        self.capture_seconds = time.perf_counter() - start
        self.sizes = tuple(sizes)
        self.top = max(sizes)
        if capture is not CaptureWhen.NOW:
            log.info("prefill graphs: %d token sizes (up to %d tokens), captured later", len(sizes), self.top)
            return
        captured = sum(st.captured for st in self.runner.status())
        log.info(
            "prefill graphs: %d of %d token sizes captured (up to %d tokens) in %.2f s",
            captured, len(sizes), self.top, self.capture_seconds,
        )  # fmt: skip

    def run(self, tokens: torch.Tensor, seq: torch.Tensor, floats: torch.Tensor) -> torch.Tensor:
        """One fresh prefill from host tensors (n, 3), (3,), (3,) -> its token (1,) on the device."""
        dev = self._device
        return self.runner(to_device(tokens, dev), to_device(seq, dev), to_device(floats, dev))
