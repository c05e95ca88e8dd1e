"""Fresh prefill through captured graphs: one sequence's prompt (or first chunk), padded to a token rung.

A prompt that starts at position 0 needs no cache read: attention is causal over its own tokens
(`AttentionMetadata.causal_fresh`), so a whole prefill is a fixed-shape computation once its token count
is padded to a rung of a token ladder (16, 32, 48, 64, 96, ... up to max_num_batched_tokens). Padded rows
are zeros: token 0 at position 0 writing its K/V to slot 0, inside the scratch block, and causality keeps
them from touching a real row. Eager prefill of a launch-bound model costs milliseconds of host work per
prompt; a replay costs microseconds, and a serving engine's running streams stop waiting on it.

Inputs, all static tensors: the packed buffers of a `PrefillInputs` (step_inputs.py), whose named fields
are per token (token ids, positions, cache slots: the batched input, padded with zeros) and per sequence
(the row to sample, the sampling seed, the row of last_tokens to write, temperature, top-p, top-k).
The graph samples in-graph and writes the token into last_tokens[out_row] (the next step's feed).
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
from graphrun.graphs.options import Agree, CaptureWhen
from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.models import DecoderLM
from graphrun.llm.sampler import SamplingTensors, sample
from graphrun.llm.step_inputs import PrefillInputs
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
        """A PrefillInputs' packed tensors (n tokens) -> (1,) int64; also writes last_tokens[out_row]."""
        step = PrefillInputs.over(tokens, seq, floats)
        positions = step.positions
        meta = AttentionMetadata(
            slot_mapping=step.slots,
            block_tables=self._no_table,
            context_lens=self._no_lens,
            causal_fresh=True,
        )
        hidden = self._model(step.token_ids, positions, meta, self._kv_caches)
        # clamped: a rung's warm-up runs on whatever the shared static `seq` holds from a larger rung
        row = step.sample_row.clamp(max=step.num_tokens - 1)
        logits = self._model.compute_logits(hidden.index_select(0, row))
        params = SamplingTensors(
            temperature=step.temperature, top_p=step.top_p, top_k=step.top_k.to(torch.int32), seeds=step.seed
        )
        token = sample(logits, params, positions.index_select(0, row))
        self._last_tokens.index_copy_(0, step.out_row, token)
        return token


def random_prefill_inputs(
    n: int,
    gen: torch.Generator,
    vocab_size: int,
    num_slots: int,
    feed_row: int,
    device: torch.device,
    first_slot: int = 0,
) -> PrefillInputs:
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
    step = PrefillInputs.empty(n)
    step.token_ids.copy_(torch.randint(0, vocab_size, (n,), generator=gen))
    step.positions.copy_(torch.arange(n))
    step.slots.copy_(slots)
    step.sample_row.fill_(int(torch.randint(0, n, (1,), generator=gen)))
    step.seed.fill_(12345)
    step.out_row.fill_(feed_row)
    step.temperature.fill_(float(torch.rand(1, generator=gen)) + 0.1)
    step.top_p.fill_(0.9)
    step.top_k.fill_(20.0)
    return PrefillInputs.over(*(t.to(device) for t in step.packed()))


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
        agree: Agree | None = None,
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
            step = random_prefill_inputs(n, gen, vocab, num_slots, dummy_row, device, first_slot=block_size)
            return step.packed()

        example = random_prefill_inputs(
            max(sizes), torch.Generator().manual_seed(0), vocab, num_slots, dummy_row, device, block_size
        )
        example.sample_row.fill_(0)  # the sampled row must exist at every rung: the static inputs start here
        start = time.perf_counter()
        self.runner = GraphRunner(
            PrefillStep(model, kv_caches, last_tokens),
            example.packed(),
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
            agree=agree,  # tensor parallel: a rung any rank fails is eager on all
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

    def run(self, step: PrefillInputs) -> torch.Tensor:
        """One fresh prefill from inputs on the host -> its token (1,) on the device."""
        dev = self._device
        return self.runner(*(to_device(t, dev) for t in step.packed()))
