"""Decode through captured graphs: one GraphRunner per kind of step (decode_step.py), one shared memory pool.

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
a batch with a structured-output row replays two: the structured forward (up to the hidden states), then,
once the engine has filled the token masks (token_masks.py), a small mask kind (the LM head, the masks,
greedy or full sampling); any other batch replays the sampling one. So logprobs and masks cost nothing
to the batches that want none.

Which kinds exist when: the constructor builds (and, capture="now", captures) the sampling, greedy and
logprobs kinds only (KINDS). The three structured kinds (STRUCTURED_KINDS) are built by add_structured(),
which the engine calls at the first step with a grammar row (structured_graphs.py says when and how they
are then captured, and why not at start-up). Every kind is captured over the whole ladder; the ladder
comes from max_num_seqs, so every decode batch has a rung.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from graphrun.graphs import GraphRunner, make_backend
from graphrun.graphs.backends import Backend
from graphrun.graphs.options import Agree, CaptureWhen
from graphrun.llm.decode_step import MASK_KINDS, decode_step
from graphrun.llm.logprobs import LogprobBuffers
from graphrun.llm.models import DecoderLM
from graphrun.llm.step_inputs import DecodeInputs

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


@dataclass(frozen=True, slots=True)
class _Recipe:
    """What building a decode runner of any kind takes: kept, so the structured kinds can be built later."""

    model: DecoderLM
    kv_caches: Sequence[tuple[torch.Tensor, torch.Tensor]]
    last_tokens: torch.Tensor
    shape: DecodeShape
    sizes: tuple[int, ...]
    backend: Backend  # one instance for every runner: one memory pool
    registry: CollectorRegistry | None
    compile: bool
    compile_cache_dir: str | None
    logprobs: LogprobBuffers | None
    masks: torch.Tensor | None
    agree: Agree | None


class DecodeGraphs:
    """The decode runners of every kind (decode_step.py), captured over one ladder and one pool."""

    # built at construction: sampling before greedy, so the greedy graph reuses its pool; logprobs last:
    # rarely replayed, so background capture reaches it last
    KINDS = ("sampling", "greedy", "logprobs")
    # built on first use (add_structured): only steps with a grammar row replay them
    STRUCTURED_KINDS = ("structured", *MASK_KINDS)

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
        shared = make_backend(backend, device)  # one backend instance: one pool for every runner
        self.backend = shared  # the prefill graphs share it too
        self._hidden = (model.config.hidden_size, model.norm.weight.dtype)  # what the mask kinds take
        self._recipe = _Recipe(
            model, kv_caches, last_tokens, shape, tuple(sizes), shared, registry, compile, compile_cache_dir,
            logprobs, masks, agree,
        )  # fmt: skip
        self._non_blocking = device.type == "cuda"  # callers stage in pinned memory (HostStaging)
        start = time.perf_counter()
        self.runners: dict[str, GraphRunner] = {}
        kinds = [k for k in self.KINDS if _has_buffers(k, logprobs)]
        for kind in kinds:
            self.runners[kind] = self._build(kind, capture)
        self.capture_seconds = time.perf_counter() - start
        self.pool_bytes = shared.pool_bytes()
        if capture is not CaptureWhen.NOW:
            log.info("decode graphs: %d sizes x %d kinds, captured later", len(sizes), len(kinds))
            return
        captured = sum(st.captured for r in self.runners.values() for st in r.status())
        log.info(
            "decode graphs: %d of %d captured (%d sizes x %d kinds) in %.2f s, pool %.1f MiB; "
            "the structured kinds on first use",
            captured, len(kinds) * len(sizes), len(sizes), len(kinds), self.capture_seconds,
            self.pool_bytes / 2**20,
        )  # fmt: skip

    @property
    def structured_missing(self) -> bool:
        """Whether the structured kinds can be built (the engine gave the masks) and are not yet."""
        return self._recipe.masks is not None and "structured" not in self.runners

    def add_structured(self, capture: CaptureWhen) -> list[GraphRunner]:
        """Build the structured kinds, capturing their rungs now or leaving them to a background pass
        (capture LATER); returns the new runners ([] when built already, or without masks)."""
        if not self.structured_missing:
            return []
        start = time.perf_counter()
        added = [self._build(kind, capture) for kind in self.STRUCTURED_KINDS]
        self.runners.update(zip(self.STRUCTURED_KINDS, added, strict=True))
        self.pool_bytes = self.backend.pool_bytes()
        if capture is CaptureWhen.NOW:
            captured = sum(st.captured for r in added for st in r.status())
            log.info(
                "decode graphs: the structured kinds (%s): %d of %d rungs captured in %.2f s, pool %.1f MiB",
                ", ".join(self.STRUCTURED_KINDS), captured, len(added) * len(self._recipe.sizes),
                time.perf_counter() - start, self.pool_bytes / 2**20,
            )  # fmt: skip
        return added

    def _build(self, kind: str, capture: CaptureWhen) -> GraphRunner:
        """The runner of one kind over the ladder, captured now or later."""
        r = self._recipe
        inputs = self._input_maker(kind, r.shape)
        return GraphRunner(
            decode_step(kind, r.model, r.kv_caches, r.last_tokens, r.logprobs, r.masks),
            inputs(r.shape.max_num_seqs, torch.Generator().manual_seed(0)),
            sizes=list(r.sizes),
            backend=r.backend,
            name=f"decode-{kind}",
            registry=r.registry,
            compile=r.compile,
            compile_cache_dir=r.compile_cache_dir,
            capture=capture,
            pad="repeat",  # padded rows repeat the last sequence: same token, same slot, same values
            # called with each rung's size and, for the padded check, with smaller batch sizes
            verify_inputs=inputs,
            agree=r.agree,  # tensor parallel: a rung any rank fails is eager on all
        )

    def _input_maker(
        self, kind: str, shape: DecodeShape
    ) -> Callable[[int, torch.Generator], tuple[Any, ...]]:
        """(rows, generator) -> valid random inputs of a kind: packed step inputs, after hidden states for
        the mask kinds (the example, and verification's inputs)."""
        device = self._device
        if kind not in MASK_KINDS:
            return lambda n, gen: random_inputs(shape, n, gen, device).packed()
        size, dtype = self._hidden

        def inputs(n: int, gen: torch.Generator) -> tuple[Any, ...]:
            hidden = torch.randn(n, size, generator=gen).to(device=device, dtype=dtype)
            return (hidden, *random_inputs(shape, n, gen, device).packed())

        return inputs

    def run(self, step: DecodeInputs, kind: str) -> torch.Tensor:
        """One decode step's forward kind from inputs on the host (n rows) -> (n,) next token ids, or the
        structured kind's hidden states (n, hidden_size) (a view of static outputs).

        The inputs, staged in pinned memory by the caller (step_inputs.HostStaging), go straight into the
        runner's static inputs (its zero-copy path): one asynchronous host-to-device copy per packed
        tensor, no device-side copy-in. A batch without a captured rung runs eager inside the runner
        (counted).
        """
        return self._replay(self.runners[kind], step)

    def sample(self, hidden: torch.Tensor, step: DecodeInputs, kind: str) -> torch.Tensor:
        """A structured step's masked sampling (a mask kind): its forward's hidden states (n rows, on the
        device) and the same host inputs -> (n,) next token ids (a view)."""
        return self._replay(self.runners[kind], step, hidden)

    def _replay(self, runner: GraphRunner, step: DecodeInputs, *first: torch.Tensor) -> Any:
        """Run `runner` on (*first, ints, floats): a device-side copy for `first`, the zero-copy path for
        the packed host inputs."""
        n = step.num_rows
        if runner.rung_for(n) is None:
            return runner(*first, *step.to(self._device).packed())
        (*static_first, static_ints, static_floats), _ = runner.static_inputs(n)
        for static, given in zip(static_first, first, strict=True):
            static.copy_(given)
        static_ints.copy_(step.ints, non_blocking=self._non_blocking)
        static_floats.copy_(step.floats, non_blocking=self._non_blocking)
        return runner(*static_first, static_ints, static_floats)


def decode_kind(greedy: bool, logprobs: bool, structured: bool) -> str:
    """The graph kind a batch's forward replays: structured for any grammar row (its sampling follows in
    a mask kind: decode_step.mask_kind), then logprobs, greedy, sampling."""
    return "structured" if structured else "logprobs" if logprobs else "greedy" if greedy else "sampling"


def _has_buffers(kind: str, logprobs: LogprobBuffers | None) -> bool:
    """Whether a start-up kind can be built: logprobs needs its buffers."""
    return kind != "logprobs" or logprobs is not None
