"""The LLM engine: model + paged KV cache + scheduler + graph-captured decode, one step at a time.

Start-up is named steps: load the model, size and allocate the KV cache, capture the decode graphs.
A step asks the scheduler for a batch. Decode batches replay a graph (or run eager with enforce_eager,
or when the batch has no captured rung); in prefill batches each fresh prompt replays a prefill graph
and the other rows (continuation chunks) run eager. The host reads the sampled tokens back once per
step to apply stop conditions.

The cuda graph mode (EngineConfig.cuda_graph_mode) routes each step: FULL is the above; PIECEWISE sends
every step through the piecewise graphs of the model body (piecewise_graph.py: captured per token rung,
attention eager between segments); FULL_AND_PIECEWISE (the default) keeps uniform decode batches and
single fresh prompts on their FULL graphs and sends prefill batches of several prompts, continuation
chunks and mixed steps through the piecewise graphs, so mixed steps grow to the top piecewise rung instead
of the top decode rung.

Asynchronous scheduling (the default): step() launches batch n+1 before it waits for batch n's tokens,
so the host's scheduling, packing and output handling overlap the device's work instead of leaving it
idle between steps. Step n's tokens reach step n+1 on the device (`last_tokens`, decode_graph.py), and
the host learns them one step later: step() returns the outputs of the step before the one it launched.
A request that stops on a token costs one extra (discarded) step; length limits stop it on time.

Structured output (grammar.py, token_masks.py): a request with a grammar gets a matcher; each step that
samples for it fills its mask row on the host and the step samples from the masked logits. The mask of
step n+1 depends on the token of step n, but only its sampling does, not its forward: so a step with a
grammar row whose sequence is owed that token launches its forward (the decode graph of kind
"structured", up to the hidden states: decode_step.py; or the eager / piecewise forward), then resolves
step n (waits for its tokens, advances the matchers), fills the masks and only then launches the masked
sampling (a small graph of a mask kind, or eager). The host's resolve and mask work overlap the device's
forward, as asynchronous scheduling overlaps any other step's; the tokens are those of synchronous
scheduling. A sequence that ended at step n (its grammar complete, a stop token, an abort) still has its
row in step n+1, unmasked and dropped, as any stop costs one extra step. Batches with no grammar row take
the one-graph path. The structured and mask graph kinds are not captured at start-up: the first step with
a grammar sequence builds them and a background pass captures them (structured_graphs.py), so an engine
that never sees a grammar pays nothing for them.

Background capture (EngineConfig.capture="background", background_graphs.py): start-up ends once the
KV cache is allocated; then graph rungs are captured between steps, on the engine thread (per idle turn
of a serving loop, and under load after a step when capture's share of the time allows), without
touching a running sequence's state.

Tensor parallelism (EngineConfig.tensor_parallel_size > 1, llm/parallel/): the engine built by the
caller is rank 0 and starts the other ranks, each running this same engine over its shard in a process
of its own (rank_worker.py). Once per step, before scheduling, rank 0 sends the events it heard (adds,
aborts) and every rank checks that it scheduled the same batch (parallel/link.py says why the scheduler
is replicated rather than run on rank 0 alone). The KV block count is the fewest any rank holds, and the
ranks agree on every capture verdict. On one rank none of this exists: no process, no collective.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from graphrun.errors import ConfigError
from graphrun.graphs import GraphRunner
from graphrun.graphs.backends import Backend, make_backend
from graphrun.graphs.backends.faulty import FaultyBackend, ReplayFaults
from graphrun.graphs.options import CaptureWhen
from graphrun.graphs.sizes import default_ladder, normalize_ladder
from graphrun.graphs.status import CallFallback
from graphrun.llm.background_graphs import BackgroundGraphs
from graphrun.llm.block_manager import BlockCopy, BlockManager
from graphrun.llm.choices import choice_params
from graphrun.llm.decode_graph import DecodeGraphs, DecodeShape, decode_kind
from graphrun.llm.decode_step import MASK_LOGPROBS, decode_step, mask_kind
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.engine_status import EngineStatus
from graphrun.llm.grammar import GrammarCompiler, GrammarMatcher
from graphrun.llm.graph_state import publish_graph_state
from graphrun.llm.kv_cache import KVCacheSpec, allocate_kv_cache, gpu_kv_budget, num_blocks_for_budget
from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.layers.attention_backend import select_attention_backend
from graphrun.llm.logprobs import LogprobBuffers, TokenLogprobs, token_logprobs
from graphrun.llm.parallel.commands import Abort, NewRequest, batch_fingerprint
from graphrun.llm.parallel.control import RankGroups
from graphrun.llm.parallel.group import ParallelGroup
from graphrun.llm.parallel.link import RankLink
from graphrun.llm.parallel.ranks import rank_device
from graphrun.llm.piecewise_graph import PiecewiseGraphs, piecewise_ladder
from graphrun.llm.prefill_graph import PrefillGraphs, prefill_ladder
from graphrun.llm.presets import load_model
from graphrun.llm.prompt_logprobs import record_prompt_logprobs, wants_prompt_logprobs
from graphrun.llm.sampler import SamplingTensors, greedy_sample, sample
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.scheduler import PLACEHOLDER, AdvancedBatch, ScheduledBatch, Scheduler, SchedulerConfig
from graphrun.llm.sequence import Sequence
from graphrun.llm.step_inputs import DecodeInputs, HostStaging
from graphrun.llm.step_packing import pack_decode, pack_prefill
from graphrun.llm.structured_graphs import capture_in_background, capture_now
from graphrun.llm.token_masks import TokenMasks, apply_token_masks
from graphrun.llm.transfer import to_device
from graphrun.step_timing import StepTiming

log = logging.getLogger(__name__)

# queues a launched step's sampling (nothing when its graph sampled) -> its sample rows' tokens, on the device
Sampling = Callable[[], torch.Tensor]


@dataclass(frozen=True, slots=True)
class StepOutput:
    """What one step produced for one request: its new token and, when it finished, why; and how many
    of its prompt tokens the prefix cache held; and the new token's logprobs when asked."""

    seq_id: int
    new_token_id: int
    finished: bool
    finish_reason: str | None
    num_cached_tokens: int = 0
    logprobs: TokenLogprobs | None = None  # when the request asked for them (SamplingParams.logprobs)
    # on a request's first token, when it asked for them: prompt tokens 1, 2, ...'s (prompt_logprobs.py)
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None


@dataclass(slots=True)
class _Launched:
    """A step queued on the device: its advanced batch and its tokens on their way to the host."""

    advanced: AdvancedBatch
    tokens: torch.Tensor  # (num_sample_rows,) int64 on the host, valid once `ready` has completed
    ready: torch.cuda.Event | None  # None: the copy was synchronous (CPU)
    logprobs: tuple[torch.Tensor, torch.Tensor] | None = None  # on the host: LogprobBuffers.prefix()


class LLMEngine:
    """Owns the model, the cache and the scheduler; `step()` advances every running request by one step."""

    def __init__(
        self, config: EngineConfig, registry: CollectorRegistry | None = None, ranks: RankGroups | None = None
    ) -> None:
        """ranks: this engine is a tensor-parallel worker rank in these groups (rank_worker.py); by
        default it is rank 0, and starts the other ranks when config.tensor_parallel_size > 1."""
        self.config = config
        # a private registry unless the caller (the server) passes the one it exposes: two engines in one
        # process (tests, benchmarks) must not collide on runner names
        self.registry = registry if registry is not None else CollectorRegistry()
        self._link = self._join_ranks(ranks)  # None: one rank, no processes, no collectives
        self.group = self._link.groups.model if self._link is not None else ParallelGroup.single()
        self.device = config.resolved_device()
        if self._link is not None:  # rank r on cuda:r
            self.device = rank_device(config, self.group.rank)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
        self.dtype = config.resolved_dtype(self.device)
        try:
            self._start_up()
        except BaseException:
            if self._link is not None:
                self._link.abandon()
            raise
        # the workers stop with this engine (close(), or its collection, or interpreter exit)
        self._finalizer = weakref.finalize(self, self._link.close) if self._link is not None else None

    def _join_ranks(self, ranks: RankGroups | None) -> RankLink | None:
        """This engine's link to the other tensor-parallel ranks: given (a worker), started (rank 0), or
        none (one rank)."""
        if ranks is not None:
            return RankLink(ranks)
        if self.config.tensor_parallel_size == 1:
            return None
        return RankLink.lead(self.config, rank_device(self.config, 0))

    def _start_up(self) -> None:
        config = self.config
        self._load_model()
        self._allocate_kv_cache()
        self._build_scheduler()
        # the newest step's sampled tokens, on the device: the next step's feed (decode_graph.py). One row
        # per token of the largest decode or mixed step; the extra last row takes the tokens of prefill
        # chunks that sample nothing
        rows = config.max_num_seqs + self.scheduler.config.largest_mixed_budget + 1
        self.last_tokens = torch.zeros(rows, dtype=torch.int64, device=self.device)
        self.logprob_buffers = LogprobBuffers(rows, self.model_config.vocab_size, self.device)
        # structured output: masks cover every id of the model and of the tokenizer
        self._mask_vocab_size = max(self.model_config.vocab_size, self.tokenizer.vocab_size)
        self.token_masks = TokenMasks(rows, self._mask_vocab_size, self.device)
        self._grammars: GrammarCompiler | None = None  # built at the first structured request
        self.decode_graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        self._background: BackgroundGraphs | None = None  # capture="background": the pass under way
        self._faults: FaultyBackend | None = None  # --faults replay=RATE: armed once every graph is captured
        self.piecewise_graphs: PiecewiseGraphs | None = None
        masks = self.token_masks.device_masks
        self._eager_decode = {
            kind: decode_step(kind, self.model, self.kv_caches, self.last_tokens, self.logprob_buffers, masks)
            for kind in (*DecodeGraphs.KINDS, *DecodeGraphs.STRUCTURED_KINDS, MASK_LOGPROBS)
        }
        self._capture_graphs(self.registry)
        self._next_seq_id = 0
        self._launched: _Launched | None = None  # at most one step whose tokens the host has not seen
        self._async = config.async_scheduling
        self.last_step_timing: StepTiming | None = None  # the newest step()'s host timeline
        self._last_wait_end: float | None = None

    # ----- start-up ---------------------------------------------------------------------------------

    def _load_model(self) -> None:
        start = time.perf_counter()
        self.attention_backend = select_attention_backend(self.device)  # chosen once, for every step
        self.model, self.tokenizer, self.model_config = load_model(
            self.config.model, self.dtype, self.device, self.config.seed, self.attention_backend, self.group
        )
        self.model.eval().requires_grad_(False)
        limit = self.model_config.max_position_embeddings
        self.max_model_len = self.config.max_model_len or min(4096, limit)
        if self.max_model_len > limit:
            raise ConfigError(
                f"max_model_len={self.max_model_len} exceeds the model's max_position_embeddings={limit}"
            )
        log.info(
            "weights: %s loaded in %.2f s, attention backend %s",
            self.config.model, time.perf_counter() - start, self.attention_backend.name,
        )  # fmt: skip

    def _allocate_kv_cache(self) -> None:
        cfg = self.config
        spec = KVCacheSpec.from_model(self.model_config, cfg.block_size, self.dtype, self.group.config)
        if self.device.type == "cuda":
            budget = gpu_kv_budget(self.config.gpu_memory_utilization, self.device)
        else:
            budget = self.config.cpu_kv_cache_bytes
        self.num_blocks = num_blocks_for_budget(spec, budget)
        if self._link is not None:  # every rank's scheduler hands out the same blocks: what all can hold
            self.num_blocks = self._link.min_blocks(self.num_blocks)
        self.kv_caches = allocate_kv_cache(spec, self.num_blocks, self.device)
        self.kv_spec = spec

    def _build_scheduler(self) -> None:
        cfg = self.config
        self._mixed_graph_rows = max(self.capture_sizes(), default=0)
        sched = SchedulerConfig(
            self.max_model_len,
            cfg.max_num_seqs,
            cfg.max_num_batched_tokens,
            cfg.block_size,
            mixed_prefill_tokens=cfg.mixed_prefill_tokens,
            max_mixed_rows=self._max_mixed_rows(),
            max_mixed_prefill_tokens=self._max_mixed_prefill_tokens(),
        )
        eos = self.model_config.eos_token_ids or self.tokenizer.eos_token_ids
        blocks = BlockManager(self.num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(sched, blocks, eos)
        self.max_blocks_per_seq = sched.max_blocks_per_seq
        # a decode-path step has at most max_num_seqs rows: mixed steps above the top rung run eager
        pinned = self.device.type == "cuda"
        self._decode_staging = HostStaging(cfg.max_num_seqs, self.max_blocks_per_seq, pin_memory=pinned)

    def _max_mixed_rows(self) -> int | None:
        """A mixed step replays the decode graph, one row per token, so its rows stay within the top decode
        rung - unless the prompt budget is larger than that rung: then steps grow to the budget and those
        above the rung run eager, their prompt chunks by varlen attention (_run_mixed_eager). Eager steps
        are host-bound (22-65 ms for 560 tokens on an H200, benchmarks/profile_mixed_step.py), so a larger
        budget trades inter-token latency for time to first token. Graphs on or off, the same rule -
        except with piecewise graphs, which replay mixed steps of any size: then the rows stay within
        their top rung, so every mixed step has a graph."""
        top = self._piecewise_top()
        if top:
            return top
        if self.config.mixed_prefill_tokens <= self._mixed_graph_rows:
            return self._mixed_graph_rows or None
        return None

    def _max_mixed_prefill_tokens(self) -> int | None:
        """How far a mixed step's prompt budget may grow with the queue (SchedulerConfig.mixed_budget):
        the configured ceiling; by default, with piecewise graphs, their top rung (every such step still
        replays a graph), else no growth (a larger step would run eager)."""
        cfg = self.config
        if cfg.max_mixed_prefill_tokens is not None:  # EngineConfig checked it is >= mixed_prefill_tokens
            return cfg.max_mixed_prefill_tokens
        top = self._piecewise_top()
        return max(top, cfg.mixed_prefill_tokens) if top else None

    def _piecewise_top(self) -> int:
        """The top rung of the piecewise graphs this engine will capture; 0 when it captures none."""
        pieces = self.piecewise_capture_sizes() if self.config.piecewise_graphs(self.device) else ()
        return max(pieces, default=0)

    def capture_sizes(self) -> tuple[int, ...]:
        """The decode ladder: explicit sizes, or the default ladder up to the graph max batch size."""
        cfg = self.config
        if cfg.cuda_graph_sizes:
            return normalize_ladder(s for s in cfg.cuda_graph_sizes if s <= cfg.max_num_seqs)
        top = cfg.cuda_graph_max_bs if cfg.cuda_graph_max_bs is not None else cfg.max_num_seqs
        return default_ladder(min(top, cfg.max_num_seqs))

    def _capture_graphs(self, registry: CollectorRegistry) -> None:
        backend_name = self.config.graph_backend_for(self.device)
        if backend_name is not None:
            backend: str | Backend = backend_name
            if self.config.replay_fault_rate:  # a fault drill: every graph of the engine on one backend
                faults = ReplayFaults(self.config.replay_fault_rate, self.config.seed)
                backend = self._faults = FaultyBackend(make_backend(backend_name, self.device), faults)
            background = self.config.capture == "background"
            # background capture writes its random prompts' K/V only into blocks held back for it
            num_slots = self._reserve_capture_blocks(self._capture_tokens()) if background else None
            if self.config.full_graphs(self.device):
                self._capture_decode_and_prefill(registry, backend, num_slots)
            if self.config.piecewise_graphs(self.device):
                shared = self.decode_graphs.backend if self.decode_graphs is not None else None
                self._capture_piecewise(registry, shared or make_backend(backend, self.device), num_slots)
            if background:
                self._start_background_capture()
        else:
            log.info("decode graphs: off (%s); decode runs eager", self.config.why_eager(self.device))
        publish_graph_state(registry, backend_name, self.config.graphs_off(self.device))

    def _capture_tokens(self) -> int:
        """The most tokens one capture writes to the KV cache: the top prefill or piecewise rung."""
        sizes = [0]
        if self.config.full_graphs(self.device):
            sizes += self.prefill_capture_sizes()
        if self.config.piecewise_graphs(self.device):
            sizes += self.piecewise_capture_sizes()
        return max(sizes)

    def _capture_decode_and_prefill(
        self, registry: CollectorRegistry, backend: str | Backend, num_slots: int | None
    ) -> None:
        shape = DecodeShape(
            self.config.max_num_seqs,
            self.max_blocks_per_seq,
            self.max_model_len,
            self.num_blocks,
            self.config.block_size,
            self.model_config.vocab_size,
        )
        background = self.config.capture == "background"
        when = CaptureWhen.LATER if background else CaptureWhen.NOW
        with torch.inference_mode():
            self.decode_graphs = DecodeGraphs(
                self.model, self.kv_caches, self.last_tokens, shape, self.capture_sizes(), backend, registry,
                compile=self.config.compile, compile_cache_dir=self.config.compile_cache_dir, capture=when,
                logprobs=self.logprob_buffers, masks=self.token_masks.device_masks, agree=self._agree(),
            )  # fmt: skip
            sizes = self.prefill_capture_sizes()
            if sizes:
                self.prefill_graphs = PrefillGraphs(
                    self.model,
                    self.kv_caches,
                    self.last_tokens,
                    sizes,
                    self.decode_graphs.backend,  # one memory pool for every graph
                    registry,
                    compile=self.config.compile,
                    compile_cache_dir=self.config.compile_cache_dir,
                    capture=when,
                    num_slots=num_slots,
                    agree=self._agree(),
                )

    def _agree(self) -> Callable[[bool], bool] | None:
        """Tensor parallel: the ranks join every capture verdict (a rung one rank fails is eager on all)."""
        return self.group.agree if self._link is not None else None

    def _reserve_capture_blocks(self, num_tokens: int) -> int:
        """Hold enough KV blocks for the largest prefill capture (each token its own slot) until background
        capture ends; returns the end of their slots (they start after the scratch block)."""
        manager = self.scheduler.block_manager
        blocks = manager.reserve(manager.blocks_for_tokens(num_tokens))
        log.info("graphs: %d KV blocks held for background capture until it ends", len(blocks))
        return blocks.stop * self.config.block_size

    def _want_structured_graphs(self, batch: ScheduledBatch) -> None:
        """The structured decode kinds, built at the first step with a grammar sequence (captured in the
        background on one rank, now with tensor parallelism: structured_graphs.py says why)."""
        graphs = self.decode_graphs
        if graphs is None or not graphs.structured_missing or not _has_grammar(batch.seqs):
            return
        if self._link is not None:
            capture_now(graphs, self.registry, self.last_tokens)
            return
        self._background = capture_in_background(graphs, self.registry, self.last_tokens, self._background)

    def capture_structured_graphs(self) -> None:
        """Capture the structured decode kinds now rather than at the first structured step (a benchmark
        that times them); nothing when they exist or there are no decode graphs. Between steps, on one
        rank: tensor-parallel ranks must capture together, which only a step makes them do."""
        if self._link is not None:
            raise RuntimeError("tensor parallel: the structured graphs come with the first structured step")
        if self.decode_graphs is not None and self.decode_graphs.structured_missing:
            capture_now(self.decode_graphs, self.registry, self.last_tokens)

    def _start_background_capture(self) -> None:
        self._background = BackgroundGraphs(self._runners(), self.last_tokens, self.scheduler.block_manager)
        log.info("graphs: %s in the background, between steps", self.graph_progress())

    @property
    def capture_pending(self) -> bool:
        """Whether a background capture has rungs left (capture_step() takes the next)."""
        return self._background is not None and self._background.pending

    @torch.inference_mode()
    def capture_step(self) -> bool:
        """Capture the next pending rung of a background capture (background_graphs.py) now; False when
        none is left. A serving loop calls it while idle; step() takes rungs itself, paced so that
        capture takes at most a quarter of a busy engine's time."""
        return self._background is not None and self._background.step()

    def graph_progress(self) -> str:
        """Graphs in a word for /health: "off", "captured 34/36" or "capturing 3/36" (rungs done)."""
        runners = self._runners()
        if not runners:
            return "off"
        total = sum(len(r.sizes) for r in runners)
        pending = sum(len(r.pending_rungs) for r in runners)
        if pending:
            return f"capturing {total - pending}/{total}"
        captured = sum(s.captured for r in runners for s in r.status())
        return f"captured {captured}/{total}"

    def _runners(self) -> list[GraphRunner]:
        runners = [*self.decode_graphs.runners.values()] if self.decode_graphs is not None else []
        if self.prefill_graphs is not None:
            runners.append(self.prefill_graphs.runner)
        if self.piecewise_graphs is not None:
            runners.append(self.piecewise_graphs.runner)
        return runners

    def _capture_piecewise(
        self, registry: CollectorRegistry, backend: Backend, num_slots: int | None
    ) -> None:
        sizes = self.piecewise_capture_sizes()
        if not sizes:
            log.info("piecewise graphs: off (--cuda-graph-max-prefill-tokens 0); prefill, mixed steps eager")
            return
        with torch.inference_mode():
            when = CaptureWhen.LATER if num_slots is not None else CaptureWhen.NOW
            self.piecewise_graphs = PiecewiseGraphs(
                self.model, self.kv_caches, sizes, backend, registry, capture=when, num_slots=num_slots,
                agree=self._agree(),
            )  # fmt: skip

    def piecewise_capture_sizes(self) -> tuple[int, ...]:
        """The token ladder of the piecewise graphs: up to the step token budget and the KV cache's slots
        (a step's tokens all write one), at most 2048 (or cuda_graph_max_prefill_tokens); empty: none."""
        cfg = self.config
        top = 2048 if cfg.cuda_graph_max_prefill_tokens is None else cfg.cuda_graph_max_prefill_tokens
        slots = (self.num_blocks - 1) * cfg.block_size  # block 0 is the scratch block
        return piecewise_ladder(min(top, cfg.max_num_batched_tokens, slots))

    def prefill_capture_sizes(self) -> tuple[int, ...]:
        """The token ladder of the fresh-prefill graphs (empty: prefill runs eager)."""
        cfg = self.config
        top = 2048 if cfg.cuda_graph_max_prefill_tokens is None else cfg.cuda_graph_max_prefill_tokens
        return prefill_ladder(min(top, cfg.max_num_batched_tokens, self.max_model_len))

    # ----- requests ---------------------------------------------------------------------------------

    def add_request(self, prompt: str | list[int], params: SamplingParams) -> int:
        """Queue a request; raises RequestRejected when it can never run (too long, empty...)."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        seq = Sequence(self._next_seq_id, ids, params, base_seed=self.config.seed)
        self._attach_grammars([seq])
        self.scheduler.add(seq)
        self._next_seq_id += 1
        self._tell_ranks(NewRequest((seq.seq_id,), tuple(ids), params, choices=False))
        return seq.seq_id

    def add_choices(self, prompt: str | list[int], params: SamplingParams, n: int) -> list[int]:
        """Queue n choices of one prompt, prefilled once (choices.py); choice j samples with params.seed + j
        (no seed: each its own). Returns their seq ids in choice order; raises as add_request does."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        first = self._next_seq_id
        seqs = [
            Sequence(first + j, ids, choice_params(params, j), base_seed=self.config.seed) for j in range(n)
        ]
        self._attach_grammars(seqs)
        self.scheduler.add_choices(seqs)
        self._next_seq_id += n
        seq_ids = [seq.seq_id for seq in seqs]
        self._tell_ranks(NewRequest(tuple(seq_ids), tuple(ids), params, choices=True))
        return seq_ids

    def _tell_ranks(self, event: NewRequest | Abort) -> None:
        """Rank 0 (the one that hears requests): queue an event the other ranks apply before the next step."""
        if self._link is not None and self.group.rank == 0:
            self._link.record(event)

    def _attach_grammars(self, seqs: list[Sequence]) -> None:
        """Give each sequence with structured output its own matcher (compiled once per spec); raises
        SamplingParamsError (param "structured_output") when the constraint does not compile."""
        for seq in seqs:
            structured = seq.params.structured_output
            if structured is None:
                continue
            if self._grammars is None:
                self._grammars = GrammarCompiler(self.tokenizer, self._mask_vocab_size)
            seq.grammar = self._grammars.matcher(structured)

    @property
    def num_prefills(self) -> int:
        """Prefills begun: admissions of a prompt (after any prefix-cache hit), or of a preempted sequence's
        recompute; a choice that forks is not one."""
        return self.scheduler.num_prefills

    @property
    def num_forks(self) -> int:
        """Choices that shared their first choice's prompt cache instead of prefilling it."""
        return self.scheduler.num_forks

    def abort(self, seq_id: int) -> None:
        """Stop a request now and free its KV blocks (a client that went away)."""
        self.scheduler.abort(seq_id)
        self._tell_ranks(Abort(seq_id))

    def has_unfinished(self) -> bool:
        """True while any request is queued or running, or a launched step still owes it a token."""
        launched = self._launched
        return self.scheduler.has_unfinished() or (launched is not None and bool(launched.advanced.owed()))

    @property
    def async_scheduling(self) -> bool:
        """Whether step() launches the next batch before reading the previous one's tokens."""
        return self._async

    @async_scheduling.setter
    def async_scheduling(self, value: bool) -> None:
        launched = self._launched
        if value != self._async and launched is not None:
            if launched.advanced.owed():
                raise RuntimeError("switch async_scheduling only between requests (a step is in flight)")
            # the extra step of sequences that stopped on a token: nothing of it is kept; wait for it, so
            # the next step's staging never overwrites inputs its copies may still read
            self._resolve(launched)
            self._launched = None
        self._async = value

    # ----- one step ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, on_launched: Callable[[], None] | None = None) -> list[StepOutput]:
        """Launch the next batch, then return the outputs of the step whose tokens are ready.

        Synchronous scheduling returns this step's own outputs; asynchronous scheduling returns the
        previous step's (launched one call earlier), so the device always has the next step queued.
        on_launched runs once the batch is launched, before the wait for tokens: a server whose engine
        shares its process posts the last step's tokens there (serve/engine_loop.py), so their delivery
        overlaps the device instead of delaying the launch.

        With tensor parallelism every rank steps together (parallel/link.py): a step that fails on any
        rank raises EngineDeadError (RankFailure when a worker exited) now and at every later step.
        """
        link = self._link
        if link is None:
            return self._step(on_launched)
        try:
            link.begin_step(self._async)
            outputs = self._step(on_launched)
            link.end_step()
            return outputs
        except Exception as exc:
            dead = link.fail(exc)
            if dead is exc:
                raise
            raise dead from exc

    def _step(self, on_launched: Callable[[], None] | None) -> list[StepOutput]:
        start = time.perf_counter()
        if self._faults is not None and not self._faults.armed and not self.capture_pending:
            self._faults.armed = True
            log.info(
                "fault drill: %.2f%% of graph replays now fail and run eager", 100 * self._faults.faults.rate
            )
        self._last_wait_end = None
        previous = self._launched  # the batch's feed rows point into its tokens
        batch = self.scheduler.schedule()
        if self._link is not None:
            self._link.check_batch(_fingerprint(batch))
        self._copy_blocks(self.scheduler.take_block_copies())
        # a grammar row's mask needs the token `previous` owes its sequence: then the batch's forward is
        # launched first, and its sampling once that token is in (the wait overlaps the forward)
        masks_wait = batch is not None and previous is not None and _owes_grammar(previous, batch)
        outputs: list[StepOutput] = []
        if batch is not None:
            try:
                self._want_structured_graphs(batch)
                sampling = self._run_prefill(batch) if batch.kind == "prefill" else self._launch_decode(batch)
                if not masks_wait:
                    self._launched = self._launch_sampling(batch, sampling)
            except Exception:
                self.scheduler.discard(batch)  # `previous` stays launched: the next step() returns it
                raise
        else:
            self._launched = None
        launched = time.perf_counter()
        if on_launched is not None:
            on_launched()
        called = time.perf_counter()
        if masks_wait:
            assert batch is not None and previous is not None
            outputs = self._resolve_then_sample(previous, batch, sampling)
        elif previous is not None:
            outputs = self._resolve(previous)
        if not self._async and self._launched is not None:
            pending, self._launched = self._launched, None
            outputs += self._resolve(pending)
        end = time.perf_counter()
        if self._background is not None:  # under load, a rung when its share of the time allows
            self._background.step_if_due()
        self.last_step_timing = StepTiming(
            start,
            launched,
            self._last_wait_end or called,
            end,
            None if batch is None else batch.kind,
            0 if batch is None else len(batch.seqs),
            0 if batch is None else batch.num_tokens,
            self.scheduler.num_waiting,
            self.scheduler.num_running,
        )
        return outputs

    def _launch_sampling(self, batch: ScheduledBatch, sampling: Sampling) -> _Launched:
        """Queue a launched batch's sampling (a no-op when it sampled in its graph), advance the scheduler
        past it and queue its tokens' copy to the host."""
        tokens = sampling()
        return self._to_host(self.scheduler.advance(batch), tokens, _wants_logprobs(batch.seqs))

    def _resolve_then_sample(
        self, previous: _Launched, batch: ScheduledBatch, sampling: Sampling
    ) -> list[StepOutput]:
        """Resolve the previous step (its tokens advance the grammars), then _launch_sampling the batch
        (its masks filled now); returns the previous step's outputs. Should either raise, the batch is
        discarded and nothing is left in flight."""
        try:
            outputs = self._resolve(previous)
            self._launched = None
            self._launched = self._launch_sampling(batch, sampling)
        except Exception:
            self._launched = None
            self.scheduler.discard(batch)
            raise
        return outputs

    def _copy_blocks(self, copies: list[BlockCopy]) -> None:
        """The K/V of forked choices' partial prompt blocks, queued on the device before the step that
        reads them (stream order: after the prefill that wrote them, before any write that reuses src)."""
        if not copies:
            return
        src = to_device([c.src for c in copies], self.device, torch.int64)
        dst = to_device([c.dst for c in copies], self.device, torch.int64)
        for k_cache, v_cache in self.kv_caches:  # (num_blocks, block_size, num_kv_heads, head_dim)
            k_cache.index_copy_(0, dst, k_cache.index_select(0, src))
            v_cache.index_copy_(0, dst, v_cache.index_select(0, src))

    def _to_host(self, advanced: AdvancedBatch, tokens: torch.Tensor, logprobs: bool) -> _Launched:
        """Queue the copy of a step's sampled tokens (device), and their logprobs when some row wants
        them, into host memory; no wait."""
        values = self.logprob_buffers.prefix(tokens.shape[0]) if logprobs else ()
        if tokens.device.type != "cuda":
            host_values = tuple(v.clone() for v in values)
            return _Launched(advanced, tokens.clone(), None, _pair(host_values))
        copies = []
        for t in (tokens, *values):
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            copies.append(host)
        ready = torch.cuda.Event()
        ready.record()
        return _Launched(advanced, copies[0], ready, _pair(tuple(copies[1:])))

    def _resolve(self, launched: _Launched) -> list[StepOutput]:
        """Wait for a launched step's tokens, hand them to the scheduler, build the step's outputs."""
        if launched.ready is not None:
            launched.ready.synchronize()
        self._last_wait_end = time.perf_counter()
        tokens = launched.tokens.tolist()
        finished = {s.seq_id for s in self.scheduler.resolve(launched.advanced, tokens)}
        values, ids = ([t.tolist() for t in launched.logprobs]) if launched.logprobs else ([], [])
        outputs = []
        for i, seq, j in launched.advanced.owed():  # after resolve(): tokens a stop just cut off are gone
            done = seq.seq_id in finished
            reason = seq.finish_reason if done else None
            num_top = seq.params.logprobs
            lp = token_logprobs(values[i], ids[i], num_top) if num_top is not None and values else None
            prompt = tuple(seq.prompt_logprobs) if j == 0 and seq.params.prompt_logprobs is not None else None
            outputs.append(StepOutput(seq.seq_id, tokens[i], done, reason, seq.num_cached_tokens, lp, prompt))
        return outputs

    def _feed_rows(self, batch: ScheduledBatch) -> list[int]:
        """Per token: the row of last_tokens holding its value (a PLACEHOLDER), or -1 (known on the host)."""
        launched = self._launched
        if PLACEHOLDER not in batch.input_ids:
            return [-1] * len(batch.input_ids)
        if launched is None:
            raise RuntimeError("a batch feeds a placeholder token but no step is in flight")
        rows = {slot[0].seq_id: i for i, slot in enumerate(launched.advanced.slots) if slot is not None}
        feed = []
        starts = batch.query_start
        for row, seq in enumerate(batch.seqs):
            for i in range(starts[row], starts[row + 1]):
                feed.append(rows[seq.seq_id] if batch.input_ids[i] == PLACEHOLDER else -1)
        return feed

    def _run_prefill(self, batch: ScheduledBatch) -> Sampling:
        """Fresh prompts replay a prefill graph each (sampled in it); the other rows run eager together.

        Every sample row's token lands in last_tokens[its index among the sample rows]; the step's
        tokens are that prefix (what the returned sampling gives, once it has queued the eager rows').
        """
        if self._takes_piecewise(batch):
            return self._run_piecewise(batch)
        graphs = self.prefill_graphs
        sample_index = {row: i for i, row in enumerate(batch.sample_rows)}
        graph_rows = self._prefill_graph_rows(batch, graphs) if graphs is not None else []
        eager_sampling: Sampling | None = None
        if len(graph_rows) < len(batch.seqs):
            in_graph = set(graph_rows)
            eager_rows = [r for r in range(len(batch.seqs)) if r not in in_graph]
            sub = batch.subset(eager_rows) if graph_rows else batch
            eager_sampling = self._prefill_eager(
                sub, [sample_index[r] for r in eager_rows if r in sample_index]
            )
        dummy = self.last_tokens.shape[0] - 1
        for row in graph_rows:
            assert graphs is not None
            graphs.run(pack_prefill(batch, row, sample_index.get(row, dummy)))
        return self._front_tokens(len(batch.sample_rows), eager_sampling)

    def _front_tokens(self, num_samples: int, sampling: Sampling | None) -> Sampling:
        """A step whose sample rows' tokens land in last_tokens[:num_samples]: run `sampling` (the rows
        sampled eagerly), then those rows are its tokens."""

        def tokens() -> torch.Tensor:
            if sampling is not None:
                sampling()
            return self.last_tokens[:num_samples]

        return tokens

    def _prefill_graph_rows(self, batch: ScheduledBatch, graphs: PrefillGraphs) -> list[int]:
        """The rows of a prefill batch that replay a prefill graph: fresh prompts that fit one, whose
        tokens are all on the host; and whose request wants no logprobs (the graph samples without them:
        such a prompt runs eager, counted as a fallback of the prefill runner)."""
        rows = []
        starts = batch.query_start
        for row, seq in enumerate(batch.seqs):
            a, b = starts[row], starts[row + 1]
            if batch.positions[a] != 0 or b - a > graphs.top or PLACEHOLDER in batch.input_ids[a:b]:
                continue
            if seq.params.logprobs is None and not wants_prompt_logprobs([seq]) and seq.grammar is None:
                rows.append(row)
            else:
                graphs.runner.stats.count_fallback(CallFallback.NEEDS_OTHER_OUTPUT)
                log.debug("prefill of seq %d eager: its request wants logprobs or a grammar", seq.seq_id)
        return rows

    def _takes_piecewise(self, batch: ScheduledBatch) -> bool:
        """Whether a step runs on the piecewise graphs: every step in mode piecewise; in
        full_and_piecewise every step but a decode batch with a FULL rung and one fresh prompt that
        fits a prefill graph and wants no logprobs."""
        if self.piecewise_graphs is None:
            return False
        decode, prefill = self.decode_graphs, self.prefill_graphs
        if batch.kind == "decode":
            return decode is None or decode.runners["greedy"].rung_for(batch.num_tokens) is None
        if batch.kind == "mixed" or prefill is None or len(batch.seqs) > 1:
            return True
        fresh = batch.positions[0] == 0 and batch.num_tokens <= prefill.top
        # logprobs: the piecewise graphs leave the LM head eager, where they are computed
        wants = _wants_logprobs(batch.seqs) or wants_prompt_logprobs(batch.seqs) or _has_grammar(batch.seqs)
        return not fresh or PLACEHOLDER in batch.input_ids or wants

    def _run_piecewise(self, batch: ScheduledBatch) -> Sampling:
        """Any step through the piecewise graphs, sampled eagerly after; its sample rows' tokens land at
        the front of last_tokens (where the next step's feed rows look for them)."""
        num_samples = len(batch.sample_rows)
        return self._front_tokens(num_samples, self._prefill_eager(batch, list(range(num_samples)), True))

    def _forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, piecewise: bool
    ) -> torch.Tensor:
        """Hidden states of a step's tokens, from the piecewise graphs or the eager model."""
        if piecewise and self.piecewise_graphs is not None:
            return self.piecewise_graphs.forward(input_ids, positions, meta)
        hidden: torch.Tensor = self.model(input_ids, positions, meta, self.kv_caches)
        return hidden

    def _prefill_eager(self, batch: ScheduledBatch, out_rows: list[int], piecewise: bool = False) -> Sampling:
        """One forward over the batch (eager, or the piecewise graphs), queued now; the returned sampling
        puts its sampled tokens in last_tokens[out_rows] (and returns them)."""
        tensors = batch.to_metadata(self.device, self.max_blocks_per_seq)
        input_ids = tensors.input_ids
        feed = self._feed_rows(batch)
        if any(f >= 0 for f in feed):  # a recomputed sequence whose newest token is still on the device
            rows = to_device(feed, self.device, torch.int64)
            input_ids = torch.where(rows >= 0, self.last_tokens[rows.clamp(min=0)], input_ids)
        hidden = self._forward(input_ids, tensors.positions, tensors.attn, piecewise)
        if wants_prompt_logprobs(batch.seqs):
            record_prompt_logprobs(batch, hidden, self.model.compute_logits)
        if not batch.sample_rows:
            return lambda: self.last_tokens[:0]
        sample_hidden = hidden[tensors.sample_indices]
        positions = tensors.positions[tensors.sample_indices]
        return lambda: self._sample_eager(batch, out_rows, sample_hidden, positions)

    def _sample_eager(
        self, batch: ScheduledBatch, out_rows: list[int], hidden: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """The sample rows' tokens from their hidden states (the grammar rows masked), written to
        last_tokens[out_rows]; returns them."""
        logits = self.model.compute_logits(hidden)
        seqs = [batch.seqs[row] for row in batch.sample_rows]
        allowed = logits
        grammars = _grammar_rows(seqs, range(len(seqs)))
        if grammars:
            allowed = apply_token_masks(logits, self.token_masks.fill(len(seqs), grammars))
        if all(seq.params.temperature == 0 for seq in seqs):
            # an argmax, as the greedy decode graph takes: sample() costs more for the same argmax (the
            # torch path sorts every row's whole vocabulary; the fused kernels launch twice)
            tokens = greedy_sample(allowed)
        else:
            tokens = sample(allowed, self._sampling_tensors(seqs), positions)
        index = to_device(out_rows, self.device, torch.int64)
        self.last_tokens.index_copy_(0, index, tokens)
        if _wants_logprobs(seqs):
            self.logprob_buffers.write_rows(index, logits, tokens)
        return tokens

    def _run_decode(self, batch: ScheduledBatch) -> torch.Tensor:
        """_launch_decode and its sampling at once: the sample rows' tokens (benchmarks, tests)."""
        return self._launch_decode(batch)()

    def _launch_decode(self, batch: ScheduledBatch) -> Sampling:
        """A decode or mixed batch through the decode graph (or eager): one row per token.

        Its sampling gives the sample rows' tokens. In a mixed batch they are gathered from the token rows
        (a prompt chunk samples only its last token, and only when it completes the prompt) and written to
        the front of last_tokens, where the next step's feed rows look for them. A batch with a grammar
        row launches its forward here and leaves the masked sampling to the returned callable.
        """
        if self._takes_piecewise(batch):
            return self._run_piecewise(batch)
        if batch.kind == "mixed" and (
            batch.num_tokens > self._mixed_graph_rows or wants_prompt_logprobs(batch.seqs)
        ):  # the decode graph computes no prompt logprobs
            return self._run_mixed_eager(batch)
        step = self._pack_decode(batch)
        greedy = all(seq.params.temperature == 0 for seq in batch.seqs)
        logprobs = _wants_logprobs(batch.seqs)
        if _has_grammar([batch.seqs[row] for row in batch.sample_rows]):
            hidden = self._decode_kind(step, "structured")
            return lambda: self._sample_rows(
                batch, self._masked_sample(batch, hidden, step, greedy, logprobs)
            )
        sampled = self._sample_rows(batch, self._decode_kind(step, decode_kind(greedy, logprobs, False)))
        return lambda: sampled

    def _decode_kind(self, step: DecodeInputs, kind: str) -> torch.Tensor:
        """One forward kind of the decode step: a graph replay, or its eager callable with graphs off."""
        if self.decode_graphs is not None:
            return self.decode_graphs.run(step, kind)
        return self._eager_decode[kind](*(to_device(t, self.device) for t in step.packed()))

    def _masked_sample(
        self, batch: ScheduledBatch, hidden: torch.Tensor, step: DecodeInputs, greedy: bool, logprobs: bool
    ) -> torch.Tensor:
        """A structured step's second half: fill the masks, queue the masked sampling -> (rows,) tokens.
        With logprobs it runs eager (counted as a fallback of the mask-sampling graph)."""
        self._fill_masks(batch)
        kind = mask_kind(greedy, logprobs)
        graphs = self.decode_graphs
        if graphs is not None and kind in graphs.runners:
            return graphs.sample(hidden, step, kind)
        if graphs is not None:
            graphs.runners["mask-sampling"].stats.count_fallback(CallFallback.NEEDS_OTHER_OUTPUT)
        return self._eager_decode[kind](hidden, *(to_device(t, self.device) for t in step.packed()))

    def _sample_rows(self, batch: ScheduledBatch, tokens: torch.Tensor) -> torch.Tensor:
        """A decode-path step's tokens, one per token row -> its sample rows' (a mixed step's gathered to
        the front of last_tokens, logprobs too)."""
        if batch.kind == "decode":
            return tokens
        index = to_device(batch.sample_token_indices, self.device, torch.int64)
        sampled = tokens.index_select(0, index)
        self.last_tokens[: sampled.shape[0]].copy_(sampled)
        if _wants_logprobs(batch.seqs):
            self.logprob_buffers.gather_to_front(index)
        return sampled

    def _fill_masks(self, batch: ScheduledBatch) -> None:
        """The token masks of a decode or mixed batch, one row per token: each grammar sequence's sample
        row from its matcher (which has taken every token before it: see step()), the rest all allowed."""
        seqs = [batch.seqs[row] for row in batch.sample_rows]
        self.token_masks.fill(batch.num_tokens, _grammar_rows(seqs, batch.sample_token_indices))

    def _run_mixed_eager(self, batch: ScheduledBatch) -> Sampling:
        """A mixed batch above the top decode rung: one eager forward, the decode rows through the decode
        kernel in one call and each prompt chunk through varlen attention (layers/attention.py).

        Its sample rows' tokens land at the front of last_tokens, as a graph-run mixed step's do.
        """
        num_samples = len(batch.sample_rows)
        return self._front_tokens(num_samples, self._prefill_eager(batch, list(range(num_samples))))

    def _pack_decode(self, batch: ScheduledBatch) -> DecodeInputs:
        """The batch's decode inputs (step_inputs.py), one row per token, in the next host staging set."""
        step = self._decode_staging.next(batch.num_tokens)
        return pack_decode(batch, self._feed_rows(batch), step)

    def _sampling_tensors(self, seqs: list[Sequence]) -> SamplingTensors:
        """The sample rows' parameters on the device, queued without a host sync (transfer.py): built as
        torch.tensor(..., device=cuda) they were four copies from pageable memory, each waiting for the
        step's forward to finish, so every eager-sampled step (prefill, mixed, piecewise) ran its host
        work and its GPU work one after the other."""
        p = [s.params for s in seqs]
        dev = self.device
        return SamplingTensors(
            temperature=to_device([x.temperature for x in p], dev, torch.float32),
            top_k=to_device([x.top_k for x in p], dev, torch.int32),
            top_p=to_device([x.top_p for x in p], dev, torch.float32),
            seeds=to_device([s.rng_seed for s in seqs], dev, torch.int64),
        )

    def close(self) -> None:
        """Stop the other tensor-parallel ranks (rank 0) and leave their groups; nothing to do on one rank.
        Idempotent; also runs when the engine is collected or the interpreter exits."""
        if self._finalizer is not None:
            self._finalizer()

    @property
    def worker_pids(self) -> list[int]:
        """The tensor-parallel worker processes rank 0 started (empty on one rank)."""
        return self._link.pids if self._link is not None else []

    def status(self) -> EngineStatus:
        """Start-up facts and every graph runner's per-size status; print it for tables."""
        runners = self._runners()
        any_graphs = self.decode_graphs is not None or self.piecewise_graphs is not None
        off = None if any_graphs else self.config.why_eager(self.device)
        dtype = str(self.dtype).removeprefix("torch.")
        return EngineStatus(
            self.config.model, str(self.device), dtype, self.num_blocks, self.config.block_size, off,
            tuple(r.status() for r in runners),
        )  # fmt: skip

    def _graph_pool_bytes(self) -> int:
        """Bytes the graphs' one shared pool holds (the decode graphs' backend, else the piecewise one)."""
        if self.decode_graphs is not None:
            return self.decode_graphs.backend.pool_bytes()
        return self.piecewise_graphs.runner.backend.pool_bytes() if self.piecewise_graphs is not None else 0

    def describe(self) -> dict[str, Any]:
        """Start-up facts for logs, /health and benchmarks."""
        graphs = self.decode_graphs
        return {
            "model": self.config.model,
            "device": str(self.device),
            "tensor_parallel_size": self.config.tensor_parallel_size,
            "dtype": str(self.dtype).removeprefix("torch."),
            "num_kv_blocks": self.num_blocks,
            "block_size": self.config.block_size,
            "decode_graphs": graphs is not None,
            "graphs_off": self.config.graphs_off(self.device),  # why not (None: they are on)
            "capture_sizes": list(self.capture_sizes()) if graphs is not None else [],
            "capture_seconds": graphs.capture_seconds if graphs is not None else 0.0,
            "prefill_capture_sizes": list(self.prefill_graphs.sizes) if self.prefill_graphs else [],
            "prefill_capture_seconds": self.prefill_graphs.capture_seconds if self.prefill_graphs else 0.0,
            "graph_pool_mib": self._graph_pool_bytes() / 2**20,
            "capture": self.config.capture,
            "graphs": self.graph_progress(),
            "cuda_graph_mode": self.config.cuda_graph_mode,
            "piecewise_capture_sizes": list(pw.sizes) if (pw := self.piecewise_graphs) else [],
            "piecewise_capture_seconds": pw.capture_seconds if (pw := self.piecewise_graphs) else 0.0,
        }


def _fingerprint(batch: ScheduledBatch | None) -> int:
    """The digest the tensor-parallel ranks compare each step (parallel/commands.py)."""
    if batch is None:
        return batch_fingerprint(None, (), (), ())
    seq_ids = [seq.seq_id for seq in batch.seqs]
    return batch_fingerprint(batch.kind, seq_ids, batch.num_new_tokens, batch.context_lens)


def _wants_logprobs(seqs: list[Sequence]) -> bool:
    """Whether some sequence of a step asked for logprobs (then the step computes them for every row)."""
    return any(seq.params.logprobs is not None for seq in seqs)


def _has_grammar(seqs: list[Sequence]) -> bool:
    """Whether some sequence of a step has structured output (then the step masks its logits)."""
    return any(seq.grammar is not None for seq in seqs)


def _owes_grammar(launched: _Launched, batch: ScheduledBatch) -> bool:
    """Whether a launched step owes a token to a grammar sequence that samples in `batch` (its mask
    needs that token)."""
    waiting = {seq.seq_id for _, seq, _ in launched.advanced.owed() if seq.grammar is not None}
    return any(batch.seqs[row].seq_id in waiting for row in batch.sample_rows)


def _grammar_rows(seqs: list[Sequence], rows: Iterable[int]) -> list[tuple[int, GrammarMatcher]]:
    """(mask row, matcher) of each sequence with a grammar, seqs[i] at rows[i]. A sequence that ended at
    the step before (a stop token, its grammar complete, an abort) is skipped: its row, computed because it
    was scheduled before its end was known, is dropped, and its matcher may take no more."""
    return [
        (row, seq.grammar)
        for seq, row in zip(seqs, rows, strict=True)
        if seq.grammar is not None and not seq.is_finished
    ]


def _pair(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(values, ids) from LogprobBuffers.prefix() copied, or None when the step computed none."""
    return (tensors[0], tensors[1]) if tensors else None
