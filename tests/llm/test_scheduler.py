"""Scheduler on CPU with a fake model: admission, chunked prefill, alternation, preemption, stops, metadata.

The fake model "samples" a token that depends only on (sequence, position), so a request's output is the
same however it was batched, chunked or preempted, and tests can say exactly what each request must get.
"""

import logging
import math

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from graphrun.llm.block_manager import SCRATCH_BLOCK, BlockManager
from graphrun.llm.kv_cache import KVCacheSpec, allocate_kv_cache
from graphrun.llm.layers.attention import decode_attention_reference, prefill_attention_reference, write_kv
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.scheduler import RequestRejected, ScheduledBatch, Scheduler, SchedulerConfig
from graphrun.llm.sequence import Sequence, SequenceStatus, derive_seed

EOS = 2
RUNNING, WAITING = SequenceStatus.RUNNING, SequenceStatus.WAITING


def make(
    num_blocks=64, block_size=4, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=128, eos=(EOS,)
):
    config = SchedulerConfig(max_model_len, max_num_seqs, max_num_batched_tokens, block_size)
    return Scheduler(config, BlockManager(num_blocks, block_size), eos)


def new_seq(seq_id, prompt_len, max_tokens=4, ignore_eos=True, **kwargs):
    prompt = [10 + (seq_id * 7 + i) % 50 for i in range(prompt_len)]
    return Sequence(seq_id, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos, **kwargs))


def fake_token(seq, position):
    """The token the fake model samples after `position`: depends only on the request and the position."""
    return 100 + (seq.seq_id * 13 + position) % 50


def expected_output(seq):
    first = seq.num_prompt_tokens - 1
    return [fake_token(seq, p) for p in range(first, first + seq.params.max_tokens)]


def step(sched, token_fn=fake_token):
    batch = sched.schedule()
    if batch is not None:
        rows = zip(batch.sample_rows, batch.sample_token_indices, strict=True)
        sched.update(batch, [token_fn(batch.seqs[r], batch.positions[i]) for r, i in rows])
    return batch


def run_all(sched, token_fn=fake_token, max_steps=5000):
    batches = []
    while sched.has_unfinished():
        batch = step(sched, token_fn)
        assert batch is not None, "unfinished work but nothing scheduled: deadlock"
        batches.append(batch)
        assert len(batches) < max_steps
    return batches


def row_slice(batch, row):
    start = batch.query_start[row]
    return slice(start, start + batch.num_new_tokens[row])


def test_sequence_helpers_and_seeds():
    s = Sequence(3, [5, 6, 7], SamplingParams())
    s.output_token_ids += [8, 9]
    assert s.num_tokens == 5 and s.all_token_ids == [5, 6, 7, 8, 9] and s.last_token_id == 9
    assert [s.token_ids(a, b) for a, b in [(0, 2), (1, 4), (3, 5), (0, 5)]] == [
        [5, 6],
        [6, 7, 8],
        [8, 9],
        s.all_token_ids,
    ]
    s.num_computed_tokens = 4
    assert s.num_uncomputed_tokens == 1 and not s.is_prefilling
    assert Sequence(1, [1], SamplingParams(seed=42)).rng_seed == 42
    seeds = {Sequence(i, [1], SamplingParams()).rng_seed for i in range(100)}
    assert len(seeds) == 100 and all(0 <= x < 2**63 for x in seeds)
    assert derive_seed(1, base_seed=7) != derive_seed(1) == Sequence(1, [1], SamplingParams()).rng_seed


def test_rejections_name_the_reason():
    sched = make(num_blocks=5, block_size=4, max_model_len=32)  # 4 usable blocks: 16 cached tokens
    cases = [  # the request, its code, the value to change, the message
        (new_seq(0, 0), "empty_prompt", "prompt", "prompt is empty"),
        (new_seq(1, 30, max_tokens=4), "too_long", "max_tokens", "= 34 exceeds max_model_len 32"),
        (new_seq(4, 32, max_tokens=1), "too_long", "prompt", "shorten the prompt to at most 31 tokens"),
        (new_seq(2, 15, max_tokens=3), "exceeds_cache", "max_tokens", "needs 5 KV blocks but the cache"),
        (new_seq(5, 17, max_tokens=1), "exceeds_cache", "prompt", "only 4; shorten the prompt"),
    ]
    for seq, code, param, needle in cases:
        with pytest.raises(RequestRejected, match=needle) as info:
            sched.add(seq)
        assert (info.value.code, info.value.param) == (code, param) and isinstance(info.value, ValueError)
    assert sched.num_waiting == 0 and not sched.has_unfinished()
    fits = new_seq(3, 15, max_tokens=2)  # 17 tokens, but the last is never cached: 16 = 4 blocks
    sched.add(fits)
    run_all(sched)
    assert fits.output_token_ids == expected_output(fits)
    with pytest.raises(ValueError, match="not fresh"):
        sched.add(fits)
    sched.add(new_seq(4, 3))
    with pytest.raises(ValueError, match="already scheduled"):
        sched.add(new_seq(4, 3))


def test_admission_bounded_by_max_num_seqs():
    sched = make(max_num_seqs=2)
    seqs = [new_seq(i, 3, max_tokens=3) for i in range(5)]
    for s in seqs:
        sched.add(s)
    first = step(sched)
    assert first.kind == "prefill" and first.seqs == seqs[:2]
    assert sched.num_running == 2 and sched.num_waiting == 3
    assert step(sched).kind == "decode"
    assert step(sched).kind == "decode"  # no seat for a prefill: decode goes on
    batches = [first, *run_all(sched)]
    assert max(len(b.seqs) for b in batches) == 2
    assert all(s.output_token_ids == expected_output(s) for s in seqs)


def test_admission_bounded_by_free_blocks_in_fcfs_order():
    sched = make(num_blocks=5, block_size=4)  # 4 usable blocks
    a, b, c = new_seq(0, 8, max_tokens=2), new_seq(1, 12, max_tokens=2), new_seq(2, 2, max_tokens=2)
    for s in (a, b, c):
        sched.add(s)
    batch = step(sched)
    assert batch.seqs == [a]  # b needs 3 blocks, 2 are free; c fits but does not overtake b
    assert sched.num_waiting == 2 and sched.block_manager.num_free_blocks == 2
    run_all(sched)
    assert [s.finish_reason for s in (a, b, c)] == ["length"] * 3


def test_chunked_prefill_spreads_a_long_prompt():
    sched = make(block_size=4, max_num_batched_tokens=16)
    s = new_seq(0, 40, max_tokens=2)
    sched.add(s)
    chunks = [step(sched) for _ in range(3)]
    for i, batch in enumerate(chunks):
        start, end = 16 * i, min(16 * (i + 1), 40)
        assert batch.kind == "prefill" and batch.num_new_tokens == [end - start]
        assert batch.positions == list(range(start, end))
        assert batch.input_ids == s.prompt_token_ids[start:end]
        assert batch.context_lens == [end]
        table = batch.block_tables[0]
        assert len(table) == math.ceil(end / 4)
        assert batch.slot_mapping == [table[p // 4] * 4 + p % 4 for p in range(start, end)]
        assert batch.sample_rows == ([0] if end == 40 else [])
    assert s.num_output_tokens == 1
    decode = step(sched)
    assert decode.kind == "decode" and decode.positions == [40] and decode.context_lens == [41]
    assert decode.input_ids == [s.output_token_ids[0]] and s.is_finished


def test_prefill_stopping_one_short_finishes_as_a_decode_step():
    sched = make(block_size=4, max_num_batched_tokens=16)
    s = new_seq(0, 17, max_tokens=1)
    sched.add(s)
    assert step(sched).sample_rows == []
    last = step(sched)
    assert last.kind == "decode" and last.input_ids == [s.prompt_token_ids[16]] and last.positions == [16]
    assert s.output_token_ids == expected_output(s)


def test_decode_follows_each_prefill_while_both_exist():
    sched = make(max_num_batched_tokens=8)
    a, b = new_seq(0, 4, max_tokens=20), new_seq(1, 40, max_tokens=3)
    sched.add(a)
    assert step(sched).kind == "prefill"
    sched.add(b)
    kinds = []
    for _ in range(10):
        before = a.num_output_tokens
        batch = step(sched)
        kinds.append(batch.kind)
        assert a.num_output_tokens == before + (batch.kind == "decode")
    assert kinds == ["decode", "prefill"] * 5
    assert step(sched).seqs == [a, b]  # b's prefill is done: both decode together


def test_preemption_recomputes_and_loses_nothing(caplog):
    sched = make(num_blocks=5, block_size=2)  # 4 usable blocks = 8 cached tokens
    a, b = new_seq(0, 3, max_tokens=5), new_seq(1, 3, max_tokens=5)  # 7 cached tokens each at most
    sched.add(a)
    sched.add(b)
    assert step(sched).seqs == [a, b] and sched.block_manager.num_free_blocks == 0
    assert step(sched).seqs == [a, b]  # position 3 still fits in the second block
    with caplog.at_level(logging.INFO, logger="graphrun.llm.scheduler"):
        batch = step(sched)  # a needs a third block: b, the newest, is preempted
    assert batch.seqs == [a] and sched.num_preemptions == 1 and "preempted sequence 1" in caplog.text
    assert b.status is WAITING and b.block_ids == [] and b.num_computed_tokens == 0
    assert b.output_token_ids == expected_output(b)[:2]  # kept
    kept = b.all_token_ids
    while b.status is WAITING:
        batch = step(sched)
    assert batch.kind == "prefill" and batch.seqs == [b]
    assert batch.input_ids == kept and batch.positions == list(range(len(kept)))  # prompt + output again
    run_all(sched)
    assert a.output_token_ids == expected_output(a) and b.output_token_ids == expected_output(b)
    assert sched.block_manager.num_free_blocks == sched.block_manager.num_usable_blocks


def test_newest_sequence_preempts_itself_and_older_rows_keep_going():
    sched = make(num_blocks=5, block_size=2)
    a, b = new_seq(0, 3, max_tokens=4), new_seq(1, 4, max_tokens=4)
    sched.add(a)
    sched.add(b)
    step(sched)  # 2 + 2 blocks: none free
    batch = step(sched)  # a (position 3) fits; b (position 4) needs a block, and b is the newest
    assert batch.kind == "decode" and batch.seqs == [a] and b.status is WAITING
    run_all(sched)
    assert a.output_token_ids == expected_output(a) and b.output_token_ids == expected_output(b)


def test_no_admission_in_a_step_that_preempted():
    """A partial prefill that preempts itself is not re-admitted at once (that would only restart it)."""
    sched = make(num_blocks=6, block_size=2, max_num_batched_tokens=3)
    a, p = new_seq(0, 1, max_tokens=8), new_seq(1, 9, max_tokens=1)
    sched.add(a)
    sched.add(p)
    while sched.num_preemptions == 0:
        batch = step(sched)
    assert p.status is WAITING and p.num_computed_tokens == 0  # p was the newest: it preempted itself
    assert batch.kind == "decode" and batch.seqs == [a]  # the prefill step came out empty; p stays queued
    run_all(sched)
    assert a.output_token_ids == expected_output(a) and p.output_token_ids == expected_output(p)


def test_flood_under_block_pressure_finishes_everything():
    gen = torch.Generator().manual_seed(0)
    sched = make(num_blocks=12, block_size=4, max_num_seqs=6, max_num_batched_tokens=20, max_model_len=48)
    seqs = []
    for i in range(24):
        prompt_len, max_tokens = (int(x) for x in torch.randint(1, 20, (2,), generator=gen))
        seqs.append(new_seq(i, prompt_len, max_tokens=max_tokens))
        sched.add(seqs[-1])
    batches = run_all(sched)
    assert sched.num_preemptions > 0
    assert all(s.finish_reason == "length" and s.output_token_ids == expected_output(s) for s in seqs)
    assert all(b.num_tokens <= 20 for b in batches) and all(len(b.seqs) <= 6 for b in batches)
    assert sched.block_manager.num_used_blocks == 0 and sched.num_running == sched.num_waiting == 0


def test_abort_frees_blocks_at_once_wherever_the_request_is():
    sched = make(max_num_seqs=1)
    a, b = new_seq(0, 9, max_tokens=8), new_seq(1, 3)
    sched.add(a)
    sched.add(b)
    step(sched)
    assert sched.block_manager.num_used_blocks == 3
    assert sched.abort(1) is b and b.finish_reason == "abort" and sched.num_waiting == 0  # waiting
    batch = sched.schedule()
    assert sched.abort(0) is a and sched.block_manager.num_used_blocks == 0  # in flight
    assert sched.update(batch, [7]) == [] and a.output_token_ids == [fake_token(a, 8)]
    assert a.status is SequenceStatus.FINISHED and a.finish_reason == "abort"
    assert sched.abort(0) is None and sched.abort(99) is None
    assert not sched.has_unfinished() and sched.schedule() is None


def test_stop_conditions():
    sched = make()
    eos_at_2 = [new_seq(0, 3, max_tokens=8, ignore_eos=False), new_seq(1, 3, max_tokens=8, ignore_eos=True)]
    stop_tok = new_seq(2, 3, max_tokens=8, ignore_eos=True, stop_token_ids=(EOS,))
    length = new_seq(3, 3, max_tokens=3, ignore_eos=False)
    for s in [*eos_at_2, stop_tok, length]:
        sched.add(s)
    # every request samples EOS as its second token, except `length`, which never sees it
    run_all(sched, lambda s, pos: EOS if pos == 3 and s is not length else 50)
    assert (eos_at_2[0].finish_reason, eos_at_2[0].output_token_ids) == ("stop", [50, EOS])  # EOS kept
    assert (eos_at_2[1].finish_reason, eos_at_2[1].num_output_tokens) == ("length", 8)  # ignore_eos
    assert (stop_tok.finish_reason, stop_tok.output_token_ids) == ("stop", [50, EOS])  # even with ignore_eos
    assert (length.finish_reason, length.num_output_tokens) == ("length", 3)


def test_update_checks_the_token_count():
    sched = make()
    sched.add(new_seq(0, 3))
    batch = sched.schedule()
    with pytest.raises(ValueError, match="got 2 sampled tokens for 1 sample rows"):
        sched.update(batch, [1, 2])


def test_a_discarded_step_changes_nothing():
    sched = make(max_num_batched_tokens=4)
    s = new_seq(0, 6)
    sched.add(s)
    first = sched.schedule()
    sched.discard(first)
    again = sched.schedule()
    assert (again.positions, again.slot_mapping, s.num_computed_tokens) == (
        first.positions,
        first.slot_mapping,
        0,
    )
    sched.update(again, [])
    run_all(sched)
    assert s.output_token_ids == expected_output(s)


def test_decode_metadata_is_padded_and_static_shaped():
    sched = make(block_size=4, max_model_len=24)
    a, b = new_seq(0, 5), new_seq(1, 9)
    sched.add(a)
    sched.add(b)
    step(sched)
    batch = sched.schedule()
    assert batch.kind == "decode"
    t = batch.to_metadata("cpu", sched.config.max_blocks_per_seq)
    assert sched.config.max_blocks_per_seq == 6
    assert t.input_ids.tolist() == [a.last_token_id, b.last_token_id] and t.positions.tolist() == [5, 9]
    assert t.attn.block_tables.shape == (2, 6) and t.attn.block_tables.dtype == torch.int32
    assert t.attn.block_tables.tolist() == [[*a.block_ids, 0, 0, 0, 0], [*b.block_ids, 0, 0, 0]]
    assert SCRATCH_BLOCK == 0
    assert t.attn.context_lens.tolist() == [6, 10] and t.attn.context_lens.dtype == torch.int32
    assert t.attn.slot_mapping.tolist() == [a.block_ids[1] * 4 + 1, b.block_ids[2] * 4 + 1]
    assert t.attn.slot_mapping.dtype == torch.int64 and t.input_ids.dtype == t.positions.dtype == torch.int64
    assert t.attn.query_start is None and t.attn.query_start_host is None and t.attn.context_lens_host is None
    assert t.sample_indices.tolist() == [0, 1]
    with pytest.raises(ValueError, match="more than max_blocks_per_seq=2"):
        batch.to_metadata("cpu", 2)


def test_prefill_metadata_lists_query_starts():
    sched = make(block_size=4, max_num_batched_tokens=6)
    a, b = new_seq(0, 5), new_seq(1, 1)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()  # a (5) and b (1) whole: budget 6
    assert batch.num_new_tokens == [5, 1] and batch.sample_rows == [0, 1]
    t = batch.to_metadata("cpu", 4)
    assert t.attn.query_start.tolist() == [0, 5, 6] and t.attn.query_start.dtype == torch.int32
    assert t.attn.query_start_host == [0, 5, 6] and t.attn.context_lens_host == [5, 1]
    assert t.input_ids.tolist() == [*a.prompt_token_ids, b.prompt_token_ids[0]]
    assert t.positions.tolist() == [0, 1, 2, 3, 4, 0] and t.sample_indices.tolist() == [4, 5]
    assert t.attn.block_tables.shape == (2, 4)


def test_a_prompt_is_not_cut_only_because_earlier_rows_used_the_budget():
    sched = make(block_size=4, max_num_batched_tokens=6)
    a, b, c = new_seq(0, 5), new_seq(1, 3), new_seq(2, 9)
    for s in (a, b, c):
        sched.add(s)
    first = sched.schedule()
    assert first.seqs == [a] and first.num_new_tokens == [5]  # b would fit only in part: it waits
    sched.update(first, [7])
    sched.update(sched.schedule(), [7])  # a's decode step comes first after a prefill
    second = sched.schedule()
    assert second.seqs == [b] and second.num_new_tokens == [3]  # whole; c (9 > 3 left) waits
    sched.update(second, [7])
    sched.update(sched.schedule(), [7, 7])
    third = sched.schedule()
    assert third.seqs == [c] and third.num_new_tokens == [6]  # longer than any step: chunked as first row


def _dense_attention(q, k, v, scale):
    """Causal attention of the last len(q) positions over k, v (ctx, kv_heads, d), without a cache."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    n, ctx = q.shape[0], k.shape[0]
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    scores = scores.masked_fill(~torch.ones(n, ctx, dtype=torch.bool).tril(ctx - n), float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def test_paged_chunked_preempted_attention_matches_dense():
    """End to end with the attention contract: the scheduler's slots and tables give exact attention."""
    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, vocab, max_len = 4, 2, 8, 64, 40
    tables = [
        torch.randn(n, h, dim, generator=gen) for n in (vocab, max_len) for h in (heads, kv_heads, kv_heads)
    ]

    def qkv(tokens, positions):
        return [tables[i][tokens] + tables[i + 3][positions] for i in range(3)]

    sched = make(num_blocks=9, block_size=4, max_num_seqs=3, max_num_batched_tokens=7, max_model_len=max_len)
    k_cache, v_cache = allocate_kv_cache(KVCacheSpec(1, kv_heads, dim, 4, torch.float32), 9, "cpu")[0]
    for i, n in enumerate([9, 5, 13, 3]):
        sched.add(new_seq(i, n, max_tokens=6))
    scale = dim**-0.5
    while sched.has_unfinished():
        batch = sched.schedule()
        t = batch.to_metadata("cpu", sched.config.max_blocks_per_seq)
        q, k, v = qkv(t.input_ids, t.positions)
        write_kv(k_cache, v_cache, k, v, t.attn.slot_mapping)
        if batch.kind == "prefill":
            out = prefill_attention_reference(q, k_cache, v_cache, t.attn, scale)
        else:
            out = decode_attention_reference(
                q, k_cache, v_cache, t.attn.block_tables, t.attn.context_lens, scale
            )
        for row, seq in enumerate(batch.seqs):
            ctx = batch.context_lens[row]
            _, k_all, v_all = qkv(torch.tensor(seq.token_ids(0, ctx)), torch.arange(ctx))
            rows = row_slice(batch, row)
            torch.testing.assert_close(out[rows], _dense_attention(q[rows], k_all, v_all, scale))
        sched.update(batch, [int(out[i].abs().sum() * 1000) % vocab for i in batch.sample_token_indices])
    assert sched.num_preemptions > 0  # the cache is small enough that recompute was exercised


REQUEST = st.tuples(
    st.integers(0, 15),  # arrival step
    st.integers(0, 32),  # prompt length (0 is rejected, long ones exceed max_model_len)
    st.integers(1, 12),  # max_tokens
    st.one_of(st.none(), st.integers(0, 40)),  # abort step (odd: while its batch is in flight)
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    block_size=st.sampled_from([1, 2, 4, 8]),
    num_blocks=st.integers(2, 16),
    max_num_seqs=st.integers(1, 5),
    max_num_batched_tokens=st.integers(1, 32),
    requests=st.lists(REQUEST, min_size=2, max_size=12),
)
def test_random_traffic_keeps_every_invariant(
    block_size, num_blocks, max_num_seqs, max_num_batched_tokens, requests
):
    sched = make(num_blocks, block_size, max_num_seqs, max_num_batched_tokens, max_model_len=40)
    sim = _TrafficSim(sched, requests)
    while sim.pending or sched.has_unfinished():
        sim.step()
    for seq in sim.seqs.values():
        assert seq.is_finished, "request lost"
        if seq.finish_reason == "abort":
            assert seq.output_token_ids == expected_output(seq)[: seq.num_output_tokens]
        else:
            assert seq.finish_reason == "length" and seq.output_token_ids == expected_output(seq)
    assert sched.block_manager.num_free_blocks == sched.block_manager.num_usable_blocks
    event(f"preempted: {sched.num_preemptions > 0}")
    event(f"chunked: {any(s.num_prompt_tokens > max_num_batched_tokens for s in sim.seqs.values())}")


class _TrafficSim:
    """Drives random arrivals and aborts through the scheduler, checking invariants and cache contents."""

    def __init__(self, sched, requests):
        self.sched, self.step_no, self.last_kind = sched, 0, None
        self.pending = sorted(enumerate(requests), key=lambda item: item[1][0])
        self.seqs: dict[int, Sequence] = {}
        self.aborts: dict[int, int] = {}
        self.cache: dict[int, tuple[int, int]] = {}  # slot -> (seq_id, position) last written there

    def step(self):
        self._arrive()
        self._abort(in_flight=False)
        decode_ready = any(s.status is RUNNING and s.num_uncomputed_tokens == 1 for s in self.seqs.values())
        num_preemptions = self.sched.num_preemptions
        batch = self.sched.schedule()
        if batch is None:
            assert not self.sched.has_unfinished(), "unfinished work but nothing scheduled: deadlock"
        else:
            if self.last_kind == "prefill" and decode_ready and batch.kind == "prefill":
                assert self.sched.num_preemptions > num_preemptions  # decode work vanished by preemption
            self.last_kind = batch.kind
            self._check_batch(batch)
            self._abort(in_flight=True)
            rows = zip(batch.sample_rows, batch.sample_token_indices, strict=True)
            tokens = [fake_token(batch.seqs[r], batch.positions[i]) for r, i in rows]
            self.sched.update(batch, tokens)
        self._check_invariants()
        self.step_no += 1
        assert self.step_no < 5000

    def _arrive(self):
        config, bm = self.sched.config, self.sched.block_manager
        while self.pending and self.pending[0][1][0] <= self.step_no:
            seq_id, (_, prompt_len, max_tokens, abort_step) = self.pending.pop(0)
            seq = new_seq(seq_id, prompt_len, max_tokens=max_tokens)
            total = prompt_len + max_tokens
            expected = None
            if prompt_len == 0:
                expected = "empty_prompt"
            elif total > config.max_model_len:
                expected = "too_long"
            elif bm.blocks_for_tokens(total - 1) > bm.num_usable_blocks:
                expected = "exceeds_cache"
            try:
                self.sched.add(seq)
            except RequestRejected as e:
                assert e.code == expected
                continue
            assert expected is None
            self.seqs[seq_id] = seq
            if abort_step is not None:
                self.aborts[seq_id] = self.step_no + abort_step

    def _abort(self, in_flight):
        for seq_id, when in self.aborts.items():
            if when == self.step_no and (when % 2 == 1) == in_flight:
                self.sched.abort(seq_id)

    def _check_batch(self, batch: ScheduledBatch):
        bs, config = self.sched.block_manager.block_size, self.sched.config
        assert len(batch.seqs) <= config.max_num_seqs
        if batch.kind == "decode":
            assert batch.num_new_tokens == [1] * len(batch.seqs) and batch.sample_rows == list(
                range(len(batch.seqs))
            )
        else:
            assert batch.num_tokens <= config.max_num_batched_tokens
        assert len(set(batch.slot_mapping)) == batch.num_tokens and len(
            {s.seq_id for s in batch.seqs}
        ) == len(batch.seqs)
        for row, seq in enumerate(batch.seqs):
            ctx, rows, table = batch.context_lens[row], row_slice(batch, row), batch.block_tables[row]
            positions = batch.positions[rows]
            assert positions == list(range(ctx - len(positions), ctx))
            assert batch.input_ids[rows] == (seq.prompt_token_ids + expected_output(seq))[positions[0] : ctx]
            assert len(table) == math.ceil(ctx / bs) and SCRATCH_BLOCK not in table
            for pos, slot in zip(positions, batch.slot_mapping[rows], strict=True):
                assert slot == table[pos // bs] * bs + pos % bs
                self.cache[slot] = (seq.seq_id, pos)
        for row, seq in enumerate(batch.seqs):  # what attention would read is this sequence's own K/V
            table = batch.block_tables[row]
            for pos in range(batch.context_lens[row]):
                assert self.cache[table[pos // bs] * bs + pos % bs] == (seq.seq_id, pos)

    def _check_invariants(self):
        sched, bm = self.sched, self.sched.block_manager
        held = [b for s in self.seqs.values() for b in s.block_ids]
        assert len(held) == len(set(held)) == bm.num_used_blocks, "a block is held twice or leaked"
        assert bm.num_used_blocks + bm.num_free_blocks == bm.num_usable_blocks
        running = [s for s in self.seqs.values() if s.status is RUNNING]
        assert len(running) == sched.num_running <= sched.config.max_num_seqs
        assert sum(s.status is WAITING for s in self.seqs.values()) == sched.num_waiting
        for s in self.seqs.values():
            expected_blocks = math.ceil(s.num_computed_tokens / bm.block_size) if s.status is RUNNING else 0
            assert len(s.block_ids) == expected_blocks
            assert s.num_computed_tokens < s.num_tokens or s.status is not RUNNING
