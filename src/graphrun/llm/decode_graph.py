"""Decode through captured graphs: one GraphRunner per sampling kind, one shared memory pool.

All per-step state of a decode batch travels in two static tensors, so a step costs two host-to-device
copies whatever the number of layers: the packed buffers of a `DecodeInputs` (step_inputs.py), whose
named fields (token ids, positions, cache slots, context lengths, seeds, feed rows, block tables,
temperature, top-p, top-k) are views of them.
The graph unpacks them with views and casts, runs the model, samples in-graph and returns the next token
ids. Every step (graph or eager, decode or prefill) also leaves its sampled tokens in one persistent
device tensor, `last_tokens`; a row whose feed row is >= 0 takes its input token from there instead of
its token id field. That is how asynchronous scheduling feeds step n's tokens to step n+1 before the
host has seen them. Greedy-only batches replay a cheaper graph (argmax only); a batch in which some row
wants logprobs replays the logprobs one (sampling, then a log-softmax and a top-k into LogprobBuffers);
a batch with a structured-output row replays the structured one (the token masks of token_masks.py
applied to the logits before sampling, and logprobs as in the logprobs kind, so one graph serves any mix
with a grammar row); any other batch replays the sampling one. So logprobs and masks cost nothing to the
batches that want none.
The ladder comes from max_num_seqs, so every decode batch has a rung.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from prometheus_client import CollectorRegistry

from graphrun.graphs import GraphRunner, make_backend
from graphrun.graphs.backends import Backend
from graphrun.graphs.options import Agree, CaptureWhen
from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.logprobs import LogprobBuffers
from graphrun.llm.models import DecoderLM
from graphrun.llm.sampler import SamplingTensors, greedy_sample, sample
from graphrun.llm.step_inputs import DecodeInputs
from graphrun.llm.token_masks import apply_token_masks

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DecodeShape:
    """What fixes the decode graphs' input shapes and value ranges."""

    max_num_seqs: int
    max_blocks_per_seq: int
    max_model_len: int
    num_blocks: int
    block_size: int
    vocab_size: int


class DecodeStep:
    """The callable the graphs capture: packed inputs -> next token ids (num_seqs,) int64."""

    def __init__(
        self,
        model: DecoderLM,
        kv_caches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        greedy: bool,
        last_tokens: torch.Tensor,
        logprobs: LogprobBuffers | None = None,
        masks: torch.Tensor | None = None,
    ) -> None:
        self._model = model
        self._kv_caches = kv_caches
        self._greedy = greedy
        self._last_tokens = last_tokens
        self._logprobs = logprobs  # given: the "logprobs" kind, which also writes them (logprobs.py)
        self._masks = masks  # given: the "structured" kind, which reads (rows, words) token masks

    def __call__(self, ints: torch.Tensor, floats: torch.Tensor) -> torch.Tensor:
        """A DecodeInputs' packed tensors (num_seqs rows) -> (num_seqs,) int64 next token ids.

        Side effect: the sampled tokens land in last_tokens[:num_seqs] (read by the next step's feed); in
        the logprobs kind, their logprobs land in the LogprobBuffers' rows [:num_seqs].
        """
        step = DecodeInputs.over(ints, floats)
        feed, positions = step.feed_rows, step.positions
        input_ids = torch.where(feed >= 0, self._last_tokens[feed.clamp(min=0)], step.token_ids)
        meta = AttentionMetadata(
            slot_mapping=step.slots,
            block_tables=step.block_tables.to(torch.int32),
            context_lens=step.context_lens.to(torch.int32),
        )
        hidden = self._model(input_ids, positions, meta, self._kv_caches)
        logits = self._model.compute_logits(hidden)  # (num_seqs, vocab) float32
        # logprobs stay those of the raw logits, as in the other kinds; sampling sees the masked ones
        allowed = logits if self._masks is None else apply_token_masks(logits, self._masks)
        if self._greedy:
            tokens = greedy_sample(allowed)
        else:
            params = SamplingTensors(
                temperature=step.temperature,
                top_p=step.top_p,
                top_k=step.top_k.to(torch.int32),
                seeds=step.seeds,
            )
            tokens = sample(allowed, params, positions)
        self._last_tokens[: tokens.shape[0]].copy_(tokens)
        if self._logprobs is not None:
            self._logprobs.write_prefix(logits, tokens)
        return tokens


def random_inputs(shape: DecodeShape, n: int, gen: torch.Generator, device: torch.device) -> DecodeInputs:
    """Inputs for n sequences with every field inside its own valid range (capture, verification).

    Slots stay in block 0, the scratch block, so verification never writes into a live sequence's cache;
    block tables avoid it, so no row reads what the step's own rows race to write there.
    """
    step = DecodeInputs.empty(n, shape.max_blocks_per_seq)
    step.token_ids.copy_(torch.randint(0, shape.vocab_size, (n,), generator=gen))
    step.positions.copy_(torch.randint(0, shape.max_model_len, (n,), generator=gen))
    step.slots.copy_(torch.randint(0, shape.block_size, (n,), generator=gen))
    step.context_lens.copy_(step.positions + 1)
    step.seeds.copy_(torch.randint(0, 2**31, (n,), generator=gen))
    step.feed_rows.fill_(-1)  # no feed: replay and eager must read the same input, not last_tokens
    # tables never name the scratch block: every row writes its K/V there, rows sharing a slot race, and
    # a row reading racy values would make replay and eager differ for no fault of the graph
    step.block_tables.copy_(
        torch.randint(
            min(1, shape.num_blocks - 1), shape.num_blocks, (n, shape.max_blocks_per_seq), generator=gen
        )
    )
    step.temperature.copy_(torch.rand(n, generator=gen) + 0.1)
    step.top_p.copy_(torch.rand(n, generator=gen) * 0.9 + 0.1)
    step.top_k.copy_(torch.randint(0, 50, (n,), generator=gen).float())
    return step.to(device)


class DecodeGraphs:
    """The sampling, greedy, logprobs and structured decode runners, captured over one ladder and one pool."""

    KINDS = ("sampling", "greedy", "logprobs", "structured")

    def __init__(
        self,
        model: DecoderLM,
        kv_caches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        last_tokens: torch.Tensor,
        shape: DecodeShape,
        sizes: Sequence[int],
        backend: str | Backend = "auto",
        registry: CollectorRegistry | None = None,
        *,
        compile: bool = False,
        compile_cache_dir: str | None = None,
        capture: CaptureWhen = CaptureWhen.NOW,
        logprobs: LogprobBuffers | None = None,
        masks: torch.Tensor | None = None,
        agree: Agree | None = None,
    ) -> None:
        device = kv_caches[0][0].device
        self._device = device
        shared = make_backend(backend, device)  # one backend instance: one pool for both runners
        self.backend = shared  # the prefill graphs share it too
        example = random_inputs(shape, shape.max_num_seqs, torch.Generator().manual_seed(0), device)
        start = time.perf_counter()
        self.runners: dict[str, GraphRunner] = {}
        kinds = [k for k in self.KINDS if _has_buffers(k, logprobs, masks)]
        # sampling before greedy, so the greedy graph reuses its pool; logprobs and structured last: rarely
        # replayed, so background capture reaches them last
        for kind in kinds:
            step_fn = decode_step(kind, model, kv_caches, last_tokens, logprobs, masks)
            self.runners[kind] = GraphRunner(
                step_fn,
                example.packed(),
                sizes=list(sizes),
                backend=shared,
                name=f"decode-{kind}",
                registry=registry,
                compile=compile,
                compile_cache_dir=compile_cache_dir,
                capture=capture,
                pad="repeat",  # padded rows repeat the last sequence: same token, same slot, same values
                # called with each rung's size and, for the padded check, with smaller batch sizes
                verify_inputs=lambda n, gen: random_inputs(shape, n, gen, device).packed(),
                agree=agree,  # tensor parallel: a rung any rank fails is eager on all
            )
        self.capture_seconds = time.perf_counter() - start
        self._non_blocking = device.type == "cuda"  # callers stage in pinned memory (HostStaging)
        self.pool_bytes = shared.pool_bytes()
        if capture is not CaptureWhen.NOW:
            log.info("decode graphs: %d sizes x %d kinds, captured later", len(sizes), len(kinds))
            return
        captured = sum(st.captured for r in self.runners.values() for st in r.status())
        log.info(
            "decode graphs: %d of %d captured (%d sizes x %d kinds) in %.2f s, pool %.1f MiB",
            captured, len(kinds) * len(sizes), len(sizes), len(kinds), self.capture_seconds,
            self.pool_bytes / 2**20,
        )  # fmt: skip

    def run(self, step: DecodeInputs, kind: str) -> torch.Tensor:
        """One decode step from inputs on the host (n rows) -> (n,) next token ids (a view).

        The inputs, staged in pinned memory by the caller (step_inputs.HostStaging), go straight into the
        runner's static inputs (its zero-copy path): one asynchronous host-to-device copy per packed
        tensor, no device-side copy-in. A batch without a captured rung runs eager inside the runner
        (counted).
        """
        runner = self.runners[kind]
        n = step.num_rows
        if runner.rung_for(n) is None:
            return runner(*step.to(self._device).packed())
        (static_ints, static_floats), _ = runner.static_inputs(n)
        static_ints.copy_(step.ints, non_blocking=self._non_blocking)
        static_floats.copy_(step.floats, non_blocking=self._non_blocking)
        return runner(static_ints, static_floats)


def decode_kind(greedy: bool, logprobs: bool, structured: bool) -> str:
    """The graph kind a batch replays: structured for any grammar row, then logprobs, greedy, sampling."""
    return "structured" if structured else "logprobs" if logprobs else "greedy" if greedy else "sampling"


def decode_step(
    kind: str,
    model: DecoderLM,
    kv_caches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    last_tokens: torch.Tensor,
    logprobs: LogprobBuffers | None,
    masks: torch.Tensor | None,
) -> DecodeStep:
    """The step function of one kind: the logprobs and structured kinds write logprobs; structured masks."""
    return DecodeStep(
        model,
        kv_caches,
        greedy=kind == "greedy",
        last_tokens=last_tokens,
        logprobs=logprobs if kind in ("logprobs", "structured") else None,
        masks=masks if kind == "structured" else None,
    )


def _has_buffers(kind: str, logprobs: LogprobBuffers | None, masks: torch.Tensor | None) -> bool:
    """Whether a kind can be built: logprobs needs its buffers, structured those and the masks."""
    if kind == "logprobs":
        return logprobs is not None
    return kind != "structured" or (logprobs is not None and masks is not None)
