"""Continuous batching: which sequences run next step, with how many tokens, in which cache slots.

Pure Python over `Sequence` and `BlockManager` (no model, no GPU), so every policy is tested on CPU.
Each step is a *prefill* batch (chunks of prompts, at most max_num_batched_tokens tokens; a long
prompt is spread over several steps), a *decode* batch (one token for every running sequence that has
finished prefill: the uniform shape the captured decode graph wants), or a *mixed* batch: a decode batch
that also carries up to `mixed_prefill_tokens` prompt tokens, one row per token as far as the model is
concerned (each prompt token is a query over its own sequence's cache up to its position, which the
decode graph computes as it computes a decode row). Mixing keeps running streams on a steady beat while
new prompts come in: a stream waits one slightly longer step, not a whole prefill. Without mixing
(mixed_prefill_tokens=0), or when the decode rows leave no room, prefill and decode batches alternate.

Policies, in order of priority:
- FCFS: admission (WAITING -> RUNNING) takes the head of the queue only, bounded by max_num_seqs and by
  free blocks for the chunk it will prefill; nothing is admitted in a step that had to preempt.
- In a prefill batch a prompt is split into chunks only when it is the step's first row (it may exceed
  the whole budget); one that would be cut just because earlier rows used the budget waits for the next
  step and starts whole, so it prefills through a graph (fresh prompts do; continuation chunks run
  eager). In a mixed batch any prompt is chunked to fit the budget.
- A mixed batch is built only while some sequence decodes and prompt work waits; its decode rows come
  first, then continuation chunks (admission order), then admissions; rows never exceed
  `max_mixed_rows` (the top decode graph rung) and prompt chunks never preempt.
- Preemption by recompute: when an admitted sequence needs a block and none is free, the most recently
  admitted running sequence loses its blocks and goes back to the FRONT of the queue with its generated
  tokens kept; it re-prefills prompt + output later. `add()` rejects requests that could never fit the
  whole cache, so the oldest running sequence can always progress: no deadlock, no lost request.
- Protocol: schedule() -> run the model -> update(batch, sampled) -> schedule() ... Progress
  (num_computed_tokens) advances in update(), so a step that never completes changes nothing.
- Asynchronous scheduling splits update() in two, so the host schedules step n+1 while the device still
  runs step n: advance(batch) right after the step is launched (progress moves on, each sampled token is
  a PLACEHOLDER, length limits stop sequences at once), then resolve(advanced, sampled) once the tokens
  reach the host (placeholders get their values, stop tokens end sequences). Between the two, at most one
  more batch is scheduled; its rows that feed a PLACEHOLDER take the token from the device (engine.py).
  A sequence that stops on a token is thus computed one step too many; that token is dropped.
- Structured output: resolve() advances a sequence's grammar matcher by each token; a complete grammar
  ends the sequence with "stop". The next token's mask needs that, so the engine launches the forward of
  a step with a grammar row, resolves the step before, and only then fills the masks and samples; that
  step's advance() comes after the resolve() (engine.py).
- Choices (n > 1, choices.py): a group queues its first choice only, admitted when seats remain for the
  whole group; the rest fork from it in advance() once its prompt is computed, sharing its full prompt
  blocks. The partial block's device copies wait in `take_block_copies()` for the engine.
- Prefix caching (with a BlockManager that caches, prefix_cache.py): admission first takes the cached
  blocks that start the prompt, so the sequence's prefill starts after them (a continuation chunk);
  advance() registers each prompt block once the step computing it is launched.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from graphrun.errors import ConfigError, GraphrunError
from graphrun.llm.block_manager import SCRATCH_BLOCK, BlockCopy, BlockManager
from graphrun.llm.choices import ChoiceGroup
from graphrun.llm.layers.attention import AttentionMetadata, varlen_tiles
from graphrun.llm.sequence import FinishReason, Sequence, SequenceStatus
from graphrun.llm.transfer import to_device

logger = logging.getLogger(__name__)

BatchKind = Literal["prefill", "decode", "mixed"]
RejectCode = Literal["empty_prompt", "too_long", "exceeds_cache", "too_many_choices"]
RejectParam = Literal["prompt", "max_tokens", "n"]  # the request value to change

PLACEHOLDER = -1  # a sampled token whose value is still on the device (asynchronous scheduling)


class RequestRejected(GraphrunError, ValueError):
    """A request that can never run (empty, longer than max_model_len, or bigger than the whole cache).

    `code` says which, for the HTTP layer (400) and metrics; `param` which value to change: the prompt
    (it cannot run even with one generated token) or max_tokens.
    """

    def __init__(self, message: str, code: RejectCode, param: RejectParam) -> None:
        super().__init__(message)
        self.code: RejectCode = code
        self.param: RejectParam = param

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.code, self.param))  # pickled to the server process whole


# A mixed step's prompt budget aims to clear the prompt queue in this many steps (mixed_budget()):
# a larger step costs the running streams one longer inter-token gap, a burst left to the small budget
# costs the last prompts of the burst their time to first token (issue 15's concurrency-64 target).
MIXED_DRAIN_STEPS = 4


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Batch limits. max_num_batched_tokens bounds a prefill step's tokens (the chunk budget);
    mixed_prefill_tokens is the prompt tokens a decode step may carry (0: never mix) while the queue is
    short, growing with the queue up to max_mixed_prefill_tokens (None: no growth; see mixed_budget());
    max_mixed_rows bounds a mixed step's rows, decode and prompt tokens together (None: no bound)."""

    max_model_len: int
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    mixed_prefill_tokens: int = 0
    max_mixed_rows: int | None = None
    max_mixed_prefill_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"SchedulerConfig.{name} must be a positive int, got {value!r}")
        for name in ("mixed_prefill_tokens", "max_mixed_rows", "max_mixed_prefill_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"SchedulerConfig.{name} must be an int >= 0, got {value!r}")
        ceiling = self.max_mixed_prefill_tokens
        if ceiling is not None and ceiling < self.mixed_prefill_tokens:
            raise ConfigError(
                f"max_mixed_prefill_tokens ({ceiling}) is below mixed_prefill_tokens "
                f"({self.mixed_prefill_tokens}): the budget grows from the second up to the first"
            )

    @property
    def largest_mixed_budget(self) -> int:
        """The most prompt tokens any mixed step may carry (0: no mixed steps)."""
        floor = self.mixed_prefill_tokens
        return max(floor, self.max_mixed_prefill_tokens or 0) if floor else 0

    def mixed_budget(self, queued_prompt_tokens: int) -> int:
        """The prompt tokens a mixed step may carry, given the prompt tokens still to prefill (waiting and
        partly prefilled requests): enough to clear that queue in MIXED_DRAIN_STEPS steps, never below
        mixed_prefill_tokens nor above max_mixed_prefill_tokens. A burst of prompts (64 arriving at
        once) is thus prefilled in a few large steps instead of a hundred small ones, while a steady
        trickle keeps the small budget and the streams' steady beat."""
        floor = self.mixed_prefill_tokens
        ceiling = self.max_mixed_prefill_tokens
        if floor == 0 or ceiling is None:
            return floor
        return max(floor, min(ceiling, -(-queued_prompt_tokens // MIXED_DRAIN_STEPS)))

    @property
    def max_blocks_per_seq(self) -> int:
        """Block-table width that covers any sequence up to max_model_len."""
        return -(-self.max_model_len // self.block_size)


@dataclass(slots=True)
class BatchTensors:
    """A batch as model inputs on a device."""

    input_ids: torch.Tensor  # (num_tokens,) int64
    positions: torch.Tensor  # (num_tokens,) int64
    attn: AttentionMetadata
    sample_indices: torch.Tensor  # (num_sample_rows,) int64: flat token index whose logits are sampled


@dataclass(frozen=True, slots=True)
class ScheduledBatch:
    """One step's work as host lists; row i is seqs[i] with num_new_tokens[i] tokens back to back."""

    kind: BatchKind
    seqs: list[Sequence]
    num_new_tokens: list[int]  # query length per row (1 for decode)
    input_ids: list[int]  # (num_tokens,)
    positions: list[int]  # (num_tokens,)
    slot_mapping: list[int]  # (num_tokens,) cache slot of each new token's K/V
    block_tables: list[list[int]]  # per row, the sequence's blocks (unpadded)
    context_lens: list[int]  # per row, tokens in the cache after this step
    sample_rows: list[int]  # rows whose last token's logits are sampled (prefill completed / decode)

    @property
    def num_tokens(self) -> int:
        """Tokens in the batch."""
        return len(self.input_ids)

    @property
    def query_start(self) -> list[int]:
        """(num_seqs + 1,) prefix sums of num_new_tokens."""
        return [0, *itertools.accumulate(self.num_new_tokens)]

    @property
    def sample_token_indices(self) -> list[int]:
        """Flat index of the last token of each sample row (where its logits come from)."""
        starts = self.query_start
        return [starts[row + 1] - 1 for row in self.sample_rows]

    def subset(self, rows: list[int]) -> ScheduledBatch:
        """The same step restricted to `rows` (in that order), e.g. the rows that run eager."""
        starts = self.query_start
        tokens = [i for row in rows for i in range(starts[row], starts[row + 1])]
        sample = set(self.sample_rows)
        return ScheduledBatch(
            kind=self.kind,
            seqs=[self.seqs[r] for r in rows],
            num_new_tokens=[self.num_new_tokens[r] for r in rows],
            input_ids=[self.input_ids[i] for i in tokens],
            positions=[self.positions[i] for i in tokens],
            slot_mapping=[self.slot_mapping[i] for i in tokens],
            block_tables=[self.block_tables[r] for r in rows],
            context_lens=[self.context_lens[r] for r in rows],
            sample_rows=[new for new, r in enumerate(rows) if r in sample],
        )

    def num_leading_single_rows(self) -> int:
        """Rows at the front with one token each (a mixed batch's decode rows): the decode kernel's share."""
        starts = self.query_start
        n = 0
        while n < len(self.seqs) and starts[n + 1] - starts[n] == 1:
            n += 1
        return n

    def to_metadata(self, device: torch.device | str, max_blocks_per_seq: int) -> BatchTensors:
        """Tensors for the model; block tables padded with the scratch block to max_blocks_per_seq columns.

        The fixed width is what a captured decode graph needs; prefill gets it too (harmless, one shape).
        """
        widest = max(len(table) for table in self.block_tables)
        if widest > max_blocks_per_seq:
            raise ValueError(
                f"a sequence holds {widest} blocks, more than max_blocks_per_seq={max_blocks_per_seq}"
            )

        tables = [table + [SCRATCH_BLOCK] * (max_blocks_per_seq - len(table)) for table in self.block_tables]
        prefill = self.kind != "decode"  # a mixed batch comes here when it runs eager (engine.py)
        query_start = self.query_start if prefill else None
        attn = AttentionMetadata(
            slot_mapping=to_device(self.slot_mapping, device, torch.int64),
            block_tables=to_device(tables, device, torch.int32),
            context_lens=to_device(self.context_lens, device, torch.int32),
            query_start=to_device(query_start, device, torch.int32) if query_start is not None else None,
            query_start_host=query_start,
            context_lens_host=list(self.context_lens) if prefill else None,
            num_decode=self.num_leading_single_rows() if prefill else 0,
            q_tiles=to_device(varlen_tiles(query_start), device, torch.int32).view(-1, 2)
            if query_start is not None
            else None,
        )
        return BatchTensors(
            input_ids=to_device(self.input_ids, device, torch.int64),
            positions=to_device(self.positions, device, torch.int64),
            attn=attn,
            sample_indices=to_device(self.sample_token_indices, device, torch.int64),
        )


@dataclass(frozen=True, slots=True)
class AdvancedBatch:
    """A batch advanced past its step whose sampled tokens are not known yet (see Scheduler.advance).

    slots[i] is sample row i's (sequence, index of its PLACEHOLDER in output_token_ids), or None when
    the sequence was aborted before the step completed.
    """

    batch: ScheduledBatch
    slots: list[tuple[Sequence, int] | None]

    def owed(self) -> list[tuple[int, Sequence, int]]:
        """(sample row i, sequence, placeholder index) of each token still part of its sequence's output:
        neither aborted nor cut off by a stop token that an earlier step sampled."""
        return [
            (i, slot[0], slot[1])
            for i, slot in enumerate(self.slots)
            if slot is not None and slot[0].finish_reason != "abort" and slot[1] < slot[0].num_output_tokens
        ]


class Scheduler:
    """Continuous batching over a BlockManager (see the module docstring for the policies)."""

    def __init__(
        self, config: SchedulerConfig, block_manager: BlockManager, eos_token_ids: Iterable[int] = ()
    ) -> None:
        if config.block_size != block_manager.block_size:
            raise ConfigError(
                f"SchedulerConfig.block_size={config.block_size} differs from the block manager's "
                f"{block_manager.block_size}; build both from the same KVCacheSpec"
            )
        self.config = config
        self.block_manager = block_manager
        self.eos_token_ids = frozenset(eos_token_ids)
        self.num_preemptions = 0
        self._waiting: deque[Sequence] = deque()  # FCFS; preempted sequences re-enter at the front
        self._running: list[Sequence] = []  # admission order: the last is the first to be preempted
        self._unfinished: dict[int, Sequence] = {}
        self._last_kind: BatchKind | None = None
        self._in_flight: ScheduledBatch | None = None
        self._num_added = 0
        self._groups: dict[int, ChoiceGroup] = {}  # by first choice's seq_id, until the fork
        self._group_of: dict[int, ChoiceGroup] = {}  # a waiting choice's seq_id -> its group
        self._block_copies: list[BlockCopy] = []  # made by forks, for the engine before the next step
        self.num_prefills = 0  # admissions: prefills begun (from a prefix-cache hit or 0; recomputes too)
        self.num_forks = 0  # choices that forked from their first choice instead of prefilling
        self.num_prefix_queried_tokens = 0  # prompt tokens admitted with prefix caching on
        self.num_prefix_hit_tokens = 0  # of those, tokens whose K/V the prefix cache already held

    @property
    def num_waiting(self) -> int:
        """Sequences queued (new or preempted)."""
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        """Sequences admitted (holding KV blocks)."""
        return len(self._running)

    def has_unfinished(self) -> bool:
        """Whether any request is waiting or running."""
        return bool(self._unfinished)

    def add(self, seq: Sequence) -> None:
        """Queue a new request; raises RequestRejected if it could never run."""
        if seq.seq_id in self._unfinished:
            raise ValueError(f"seq_id {seq.seq_id} is already scheduled; sequence ids must be unique")
        if seq.status is not SequenceStatus.WAITING or seq.output_token_ids or seq.block_ids:
            raise ValueError(
                f"sequence {seq.seq_id} is not fresh (status {seq.status.name}); add new sequences"
            )
        self._check_fits(seq)
        seq.arrival = self._num_added
        self._num_added += 1
        self._waiting.append(seq)
        self._unfinished[seq.seq_id] = seq

    def add_choices(self, seqs: list[Sequence]) -> None:
        """Queue the choices of one prompt (same prompt and limits): seqs[0] prefills, the rest fork from
        it. Raises RequestRejected when the group could never run (including more choices than seats)."""
        first, rest = seqs[0], seqs[1:]
        if len(seqs) > self.config.max_num_seqs:
            raise RequestRejected(
                f"n={len(seqs)} choices cannot run side by side with max_num_seqs="
                f"{self.config.max_num_seqs}; ask for at most {self.config.max_num_seqs}",
                "too_many_choices",
                "n",
            )
        self.add(first)
        if not rest:
            return
        group = ChoiceGroup(first, list(rest))
        self._groups[first.seq_id] = group
        for seq in rest:
            seq.arrival = self._num_added
            self._num_added += 1
            self._unfinished[seq.seq_id] = seq
            self._group_of[seq.seq_id] = group

    def take_block_copies(self) -> list[BlockCopy]:
        """The block copies forks made since the last call; the engine runs them before the next step."""
        copies, self._block_copies = self._block_copies, []
        return copies

    def _seats_taken(self) -> int:
        """Running sequences plus the seats admitted groups keep for the choices that will fork."""
        reserved = sum(
            len(g.waiting) for g in self._groups.values() if g.first.status is SequenceStatus.RUNNING
        )
        return len(self._running) + reserved

    def _seats_for(self, seq: Sequence) -> int:
        group = self._groups.get(seq.seq_id)
        return 1 if group is None else group.num_seats

    def _check_fits(self, seq: Sequence) -> None:
        """Reject what no amount of waiting would let run, naming the value to change."""
        num_prompt, max_tokens = seq.num_prompt_tokens, seq.params.max_tokens
        if num_prompt == 0:
            raise RequestRejected("the prompt is empty; send at least one token", "empty_prompt", "prompt")
        total, max_model_len = num_prompt + max_tokens, self.config.max_model_len
        if num_prompt >= max_model_len:
            raise RequestRejected(
                f"the prompt has {num_prompt} tokens but max_model_len is {max_model_len} (the prompt and at "
                f"least one generated token); shorten the prompt to at most {max_model_len - 1} tokens",
                "too_long",
                "prompt",
            )
        if total > max_model_len:
            raise RequestRejected(
                f"prompt ({num_prompt} tokens) + max_tokens ({max_tokens}) = {total} exceeds max_model_len "
                f"{max_model_len}; lower max_tokens to at most {max_model_len - num_prompt} or shorten "
                "the prompt",
                "too_long",
                "max_tokens",
            )
        self._check_cache(num_prompt, total)

    def _check_cache(self, num_prompt: int, total: int) -> None:
        """Reject a request bigger than the whole KV cache."""
        # the last sampled token is never fed back, so at most total - 1 tokens ever sit in the cache
        manager = self.block_manager
        needed, usable = manager.blocks_for_tokens(total - 1), manager.num_usable_blocks
        if needed <= usable:
            return
        fix = "lower max_tokens"
        if manager.blocks_for_tokens(num_prompt) > usable:  # the prompt alone, with one generated token
            fix = "shorten the prompt"
        raise RequestRejected(
            f"prompt + max_tokens = {total} tokens needs {needed} KV blocks but the cache holds only "
            f"{usable}; {fix} or give the KV cache more memory",
            "exceeds_cache",
            "max_tokens" if fix == "lower max_tokens" else "prompt",
        )

    def abort(self, seq_id: int) -> Sequence | None:
        """Finish a request now with reason "abort" and free its blocks; None if unknown or finished.

        Safe between schedule() and update(): update() skips the aborted row, and its blocks are only
        reused by a later schedule().
        """
        seq = self._unfinished.get(seq_id)
        if seq is not None:
            self._finish(seq, "abort")
        return seq

    def schedule(self) -> ScheduledBatch | None:
        """The next step's batch, or None when there is nothing to run."""
        assert self._in_flight is None, "advance() or update() the previous batch before scheduling the next"
        decode_first = self._last_kind == "prefill" and any(
            s.num_uncomputed_tokens == 1 for s in self._running
        )
        order = (self._schedule_decode, self._schedule_prefill)
        for build in (self._schedule_mixed, *(order if decode_first else reversed(order))):
            batch = build()
            if batch is not None:
                self._last_kind, self._in_flight = batch.kind, batch
                return batch
        return None

    def _schedule_decode(self) -> ScheduledBatch | None:
        """One token for every running sequence with exactly one uncomputed token."""
        return self._build("decode", self._decode_rows())

    def _decode_rows(self) -> list[tuple[Sequence, int]]:
        """(sequence, 1) for each running sequence ready to decode, its block grown (may preempt)."""
        rows: list[tuple[Sequence, int]] = []
        for seq in list(self._running):
            if seq.status is SequenceStatus.RUNNING and seq.num_uncomputed_tokens == 1 and self._grow(seq, 1):
                rows.append((seq, 1))
        return rows

    def _schedule_mixed(self) -> ScheduledBatch | None:
        """Decode rows plus prompt chunks within the mixed budget; None when mixing does not apply.

        It applies while some sequence is ready to decode, prompt work exists, and the decode rows leave
        room under max_mixed_rows; otherwise schedule() alternates plain prefill and decode batches.
        """
        cfg = self.config
        if cfg.mixed_prefill_tokens == 0:
            return None
        ready = [s for s in self._running if s.num_uncomputed_tokens == 1]
        queued = self._queued_prompt_tokens()
        cap = cfg.max_mixed_rows
        budget = cfg.mixed_budget(queued)
        room = budget if cap is None else min(budget, cap - len(ready))
        prompt_work = queued > 0
        if not ready or not prompt_work or room < 1:
            return None
        num_preemptions = self.num_preemptions
        rows = self._decode_rows()
        if not rows:
            return None
        num_decode, budget = len(rows), room
        manager = self.block_manager
        for seq in list(self._running):  # continuation chunks: only blocks that are free, never a preemption
            if budget == 0:
                break
            if not seq.is_prefilling:  # decode rows included: they have one uncomputed token
                continue
            free = manager.max_tokens_for(seq) - seq.num_computed_tokens
            num_new = min(seq.num_uncomputed_tokens, budget, free)
            if num_new >= 1:
                manager.allocate(seq, seq.num_computed_tokens + num_new)
                rows.append((seq, num_new))
                budget -= num_new
        if self.num_preemptions == num_preemptions:
            self._admit(rows, budget, chunk_any=True)
        return self._build("mixed" if len(rows) > num_decode else "decode", rows)

    def _queued_prompt_tokens(self) -> int:
        """Prompt tokens still to prefill: waiting requests whole, partly prefilled ones' rest."""
        waiting = sum(seq.num_uncomputed_tokens for seq in self._waiting)
        return waiting + sum(seq.num_uncomputed_tokens for seq in self._running if seq.is_prefilling)

    def _schedule_prefill(self) -> ScheduledBatch | None:
        """Continue partial prefills (admission order), then admit from the queue, within the token budget."""
        budget = self.config.max_num_batched_tokens
        rows: list[tuple[Sequence, int]] = []
        num_preemptions = self.num_preemptions
        for seq in list(self._running):
            if budget == 0:
                break
            if seq.status is SequenceStatus.RUNNING and seq.is_prefilling:
                num_new = self._grow(seq, min(seq.num_uncomputed_tokens, budget))
                if num_new:
                    rows.append((seq, num_new))
                    budget -= num_new
        if self.num_preemptions == num_preemptions:  # admitting now would only be preempted back
            self._admit(rows, budget)
        return self._build("prefill", rows)

    def _admit(self, rows: list[tuple[Sequence, int]], budget: int, chunk_any: bool = False) -> None:
        """Move queue heads to running while seats, budget and free blocks for their first chunk last.

        chunk_any: a prompt may be cut to the budget in any row (mixed batches), not only the first.
        """
        manager = self.block_manager
        while self._waiting and budget > 0:
            seq = self._waiting[0]
            if self._seats_taken() + self._seats_for(seq) > self.config.max_num_seqs:
                break
            # [] without prefix caching, and for prompt logprobs (every prompt token's logits are needed)
            cached = manager.match_prefix(seq) if seq.params.prompt_logprobs is None else []
            num_cached = len(cached) * manager.block_size
            num_left = seq.num_tokens - num_cached
            num_new = min(num_left, budget)
            if num_new < num_left and rows and not chunk_any:
                break  # it fits a later step whole: chunk only what no single step can hold
            needed = manager.blocks_for_tokens(num_cached + num_new) - len(cached)
            if needed > manager.num_free_blocks - manager.num_reclaimed(cached):
                break  # FCFS: nobody overtakes the head
            self._waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self._running.append(seq)
            if cached:
                manager.take_prefix(seq, cached)
                seq.num_computed_tokens = num_cached
            self._count_prefix_hit(seq, num_cached)
            self.num_prefills += 1
            manager.allocate(seq, num_cached + num_new)
            rows.append((seq, num_new))
            budget -= num_new

    def _count_prefix_hit(self, seq: Sequence, num_cached: int) -> None:
        """Prefix-cache counters for an admission (a fresh prompt, or a recompute after preemption)."""
        if self.block_manager.prefix_cache is None:
            return
        if seq.num_preemptions == 0:
            seq.num_cached_tokens = num_cached
        self.num_prefix_queried_tokens += seq.num_prompt_tokens
        self.num_prefix_hit_tokens += num_cached

    def _grow(self, seq: Sequence, want: int) -> int:
        """Give running seq blocks for up to `want` more tokens, preempting the newest if none are free.

        Returns how many tokens it got (>= 1), or 0 when seq itself was the newest and got preempted.
        Victims come from the end of the running list, which is never a row already in this batch.
        """
        while True:
            num_new = min(want, self.block_manager.max_tokens_for(seq) - seq.num_computed_tokens)
            if num_new >= 1:
                self.block_manager.allocate(seq, seq.num_computed_tokens + num_new)
                return num_new
            victim = self._running[-1]
            self._preempt(victim)
            if victim is seq:
                return 0

    def _preempt(self, seq: Sequence) -> None:
        """Free seq's blocks and queue it at the front to recompute prompt + output later."""
        self._running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self._waiting.appendleft(seq)
        self.num_preemptions += 1
        logger.info(
            "preempted sequence %d (%d tokens to recompute, %d free blocks); %d preemptions so far",
            seq.seq_id,
            seq.num_tokens,
            self.block_manager.num_free_blocks,
            self.num_preemptions,
        )

    def _build(self, kind: BatchKind, rows: list[tuple[Sequence, int]]) -> ScheduledBatch | None:
        """Turn (sequence, num_new_tokens) rows into the batch's host lists (None when empty)."""
        if not rows:
            return None
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        sample_rows: list[int] = []
        for row, (seq, num_new) in enumerate(rows):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + num_new
            input_ids += seq.token_ids(start, end)
            positions += range(start, end)
            slots += self.block_manager.slots(seq, start, end)
            if end == seq.num_tokens:
                sample_rows.append(row)
        return ScheduledBatch(
            kind=kind,
            seqs=[seq for seq, _ in rows],
            num_new_tokens=[num_new for _, num_new in rows],
            input_ids=input_ids,
            positions=positions,
            slot_mapping=slots,
            block_tables=[list(seq.block_ids) for seq, _ in rows],
            context_lens=[seq.num_computed_tokens + num_new for seq, num_new in rows],
            sample_rows=sample_rows,
        )

    def discard(self, batch: ScheduledBatch) -> None:
        """Forget a batch whose model step failed: nothing advanced, so its work is scheduled again.

        Blocks it allocated stay with their sequences and are reused when the chunk is retried.
        """
        assert batch is self._in_flight, "discard() takes the batch the last schedule() returned"
        self._in_flight = None

    def update(self, batch: ScheduledBatch, sampled_token_ids: list[int]) -> list[Sequence]:
        """Record a finished step: advance progress, append sampled tokens, stop; returns finished ones.

        sampled_token_ids has one token per batch.sample_rows entry, in that order.
        """
        return self.resolve(self.advance(batch), sampled_token_ids)

    def advance(self, batch: ScheduledBatch) -> AdvancedBatch:
        """A launched step: progress moves on, sampled tokens are PLACEHOLDERs, length limits stop at once.

        The next schedule() may run before resolve(); blocks of sequences stopped here are freed now
        (work already queued on the device still writes them before any later step reuses them).
        """
        assert batch is self._in_flight, "advance() takes the batch the last schedule() returned"
        self._in_flight = None
        sample_rows = set(batch.sample_rows)
        slots: list[tuple[Sequence, int] | None] = []
        for row, (seq, num_new) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            if seq.status is not SequenceStatus.RUNNING:
                if row in sample_rows:
                    slots.append(None)  # aborted while the step ran
                continue
            assert seq.num_computed_tokens + num_new == batch.context_lens[row]
            seq.num_computed_tokens += num_new
            if seq.num_computed_tokens - num_new < seq.num_prompt_tokens:  # the chunk covered prompt tokens
                self.block_manager.cache_prompt_blocks(seq)
            if seq.seq_id in self._groups and seq.num_computed_tokens >= seq.num_prompt_tokens:
                self._fork(self._groups.pop(seq.seq_id))
            if row in sample_rows:
                seq.output_token_ids.append(PLACEHOLDER)
                slots.append((seq, seq.num_output_tokens - 1))
                if self._length_stop(seq):
                    self._finish(seq, "length")
        return AdvancedBatch(batch, slots)

    def _fork(self, group: ChoiceGroup) -> None:
        """The first choice's prompt is computed: every waiting choice shares its cache up to the last
        prompt token (which each recomputes as a decode row, sampling with its own seed), and its prompt
        logprobs when they were asked for (else a fork would want them at every step: no decode graph)."""
        first = group.first
        for seq in group.waiting:
            del self._group_of[seq.seq_id]
            num_cached, copy = self.block_manager.fork(first, seq, first.num_prompt_tokens - 1)
            if copy is not None:
                self._block_copies.append(copy)
            seq.num_computed_tokens = num_cached
            seq.prompt_logprobs = list(first.prompt_logprobs)  # the same prompt: no step computes them again
            seq.status = SequenceStatus.RUNNING
            self._running.append(seq)
        self.num_forks += len(group.waiting)

    def resolve(self, advanced: AdvancedBatch, sampled_token_ids: list[int]) -> list[Sequence]:
        """Fill an advanced batch's placeholders with the sampled tokens; returns the sequences it ended.

        A sequence ended by a stop token loses the placeholders of later steps; an aborted one is skipped.
        """
        if len(sampled_token_ids) != len(advanced.slots):
            raise ValueError(
                f"got {len(sampled_token_ids)} sampled tokens for {len(advanced.slots)} sample rows"
            )
        finished: list[Sequence] = []
        for i, seq, index in advanced.owed():  # each sequence appears once: one slot never hides another
            token = int(sampled_token_ids[i])
            seq.output_token_ids[index] = token
            if self._token_stop(seq, token) or self._grammar_stop(seq, token):
                del seq.output_token_ids[index + 1 :]  # later steps' placeholders: never part of the output
                if seq.status is SequenceStatus.FINISHED:  # a later token hit a length limit in advance()
                    seq.finish_reason = "stop"
                else:
                    self._finish(seq, "stop")
                finished.append(seq)
            elif seq.status is SequenceStatus.FINISHED and index == seq.num_output_tokens - 1:
                finished.append(seq)  # stopped by a length limit in advance(): reported with its token
        return finished

    def _regroup(self, seq: Sequence) -> None:
        """seq ends before its choices forked (an abort): the next choice prefills in its place."""
        group = self._groups.pop(seq.seq_id, None)
        if group is None or not group.waiting:
            return
        successor, *rest = group.waiting
        del self._group_of[successor.seq_id]
        if rest:
            self._groups[successor.seq_id] = regrouped = ChoiceGroup(successor, rest)
            self._group_of.update((other.seq_id, regrouped) for other in rest)
        waiting = seq.status is SequenceStatus.WAITING
        self._waiting.insert(self._waiting.index(seq) if waiting else 0, successor)

    def _token_stop(self, seq: Sequence, token: int) -> bool:
        """Whether `token` is one that ends seq (a stop token id, or EOS unless ignored)."""
        params = seq.params
        return token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids)

    @staticmethod
    def _grammar_stop(seq: Sequence, token: int) -> bool:
        """Advance seq's grammar (structured output) by `token`; whether the grammar is complete (or
        rejected it), which ends seq as a stop token would, ignore_eos or not."""
        return seq.grammar is not None and seq.grammar.advance(token)

    def _length_stop(self, seq: Sequence) -> bool:
        """Whether seq reached max_tokens or max_model_len (known on the host before the token is)."""
        return seq.num_output_tokens >= seq.params.max_tokens or seq.num_tokens >= self.config.max_model_len

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Mark seq finished, take it off its queue and free its blocks at once."""
        group = self._group_of.pop(seq.seq_id, None)
        if group is not None:  # a choice waiting to fork
            group.waiting.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self._regroup(seq)
            self._waiting.remove(seq)
        else:
            self._regroup(seq)
            self._running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        del self._unfinished[seq.seq_id]
