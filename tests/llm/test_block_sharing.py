"""Choices and prefix caching under random traffic, on the scheduler with a fake model (no tensors).

A simulated cache records, per slot, the tokens whose K/V it holds (everything from position 0 to the
slot's position). Each step checks that every row reads, at every position of its context, the K/V of
its own tokens, whoever computed them (itself, the first choice it forked from, an earlier request
whose blocks the prefix cache kept); block copies are applied as the engine applies them. Outputs are
the fake model's, whatever was shared, preempted or aborted; no block leaks.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphrun.llm.block_manager import BlockManager
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.scheduler import RequestRejected, Scheduler, SchedulerConfig
from graphrun.llm.sequence import Sequence, SequenceStatus

BLOCK = 4


def fake_token(seq: Sequence, position: int) -> int:
    return 100 + (seq.seq_id * 13 + position) % 50


class Harness:
    def __init__(self, num_blocks: int, caching: bool, mixed: int) -> None:
        config = SchedulerConfig(
            64, 6, 24, BLOCK, mixed_prefill_tokens=mixed, max_mixed_rows=8 if mixed else None
        )
        self.sched = Scheduler(config, BlockManager(num_blocks, BLOCK, caching), eos_token_ids=())
        self.cache: dict[int, tuple[int, ...]] = {}
        self.seqs: list[Sequence] = []
        self.next_id = 0

    def add(self, prompt: list[int], n: int, max_tokens: int) -> None:
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        seqs = [Sequence(self.next_id + j, prompt, params) for j in range(n)]
        self.next_id += n
        try:
            self.sched.add_choices(seqs)
        except RequestRejected:
            return
        self.seqs += seqs

    def step(self) -> bool:
        batch = self.sched.schedule()
        for copy in self.sched.take_block_copies():
            for offset in range(BLOCK):
                src = copy.src * BLOCK + offset
                if src in self.cache:
                    self.cache[copy.dst * BLOCK + offset] = self.cache[src]
        if batch is None:
            return False
        starts = batch.query_start
        for row, seq in enumerate(batch.seqs):
            outputs = [fake_token(seq, p) for p in range(seq.num_prompt_tokens - 1, 64)]
            tokens = seq.prompt_token_ids + outputs
            for i in range(starts[row], starts[row + 1]):
                self.cache[batch.slot_mapping[i]] = tuple(tokens[: batch.positions[i] + 1])
            table = batch.block_tables[row]
            for pos in range(batch.context_lens[row]):
                held = self.cache.get(table[pos // BLOCK] * BLOCK + pos % BLOCK)
                assert held == tuple(tokens[: pos + 1]), f"sequence {seq.seq_id} reads wrong K/V at {pos}"
        sampled = [
            fake_token(batch.seqs[r], batch.positions[i])
            for r, i in zip(batch.sample_rows, batch.sample_token_indices, strict=True)
        ]
        self.sched.update(batch, sampled)
        return True


PROMPTS = st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=14)  # small alphabet: shared prefixes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(
        st.tuples(PROMPTS, st.integers(1, 3), st.integers(1, 6), st.integers(0, 8)), min_size=1, max_size=8
    ),
    aborts=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 20)), max_size=4),
    num_blocks=st.integers(8, 30),
    caching=st.booleans(),
    mixed=st.sampled_from([0, 3]),
)
def test_shared_blocks_always_hold_each_readers_own_tokens(requests, aborts, num_blocks, caching, mixed):
    h = Harness(num_blocks, caching, mixed)
    pending = sorted(requests, key=lambda r: r[3])
    for step_no in range(400):
        while pending and pending[0][3] <= step_no:
            prompt, n, max_tokens, _ = pending.pop(0)
            h.add(prompt, n, max_tokens)
        for when, seq_id in aborts:
            if when == step_no:
                h.sched.abort(seq_id)
        if not h.step() and not pending and not h.sched.has_unfinished():
            break
    assert not h.sched.has_unfinished(), "deadlock: work left after 400 steps"
    bm = h.sched.block_manager
    assert bm.num_used_blocks == 0 and bm.num_free_blocks == bm.num_usable_blocks
    for seq in h.seqs:
        assert seq.status is SequenceStatus.FINISHED
        if seq.finish_reason == "length":
            first = seq.num_prompt_tokens - 1
            assert seq.output_token_ids == [
                fake_token(seq, p) for p in range(first, first + seq.params.max_tokens)
            ]
