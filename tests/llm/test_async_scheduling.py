"""Asynchronous scheduling: step n+1 is scheduled before step n's tokens are known, and loses nothing.

Scheduler level: a fake model whose token depends on the input token (so a wrong feed changes every later
token) drives the same random traffic through update() (synchronous) and advance()/resolve() with one
step in flight; outputs, finish reasons and block accounting must agree. Engine level: the tiny preset,
graphs through the simulator, async vs sync engines token for token, with stop tokens, sampling,
preemption and aborts while a step is in flight.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphrun.llm.block_manager import BlockManager
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.scheduler import PLACEHOLDER, RequestRejected, Scheduler, SchedulerConfig
from graphrun.llm.sequence import Sequence, SequenceStatus

EOS = 2


def fake_token(seq_id, position, input_token):
    """Depends on the token fed in: a wrong feed changes this token and every later one."""
    h = (seq_id * 13 + position * 7 + input_token * 3) % 97
    return EOS if h % 11 == 0 else 100 + h


def make_sched(num_blocks, block_size, max_num_seqs, budget):
    config = SchedulerConfig(48, max_num_seqs, budget, block_size)
    return Scheduler(config, BlockManager(num_blocks, block_size), (EOS,))


def make_seqs(requests):
    seqs = []
    for i, (prompt_len, max_tokens, ignore_eos) in enumerate(requests):
        prompt = [10 + (i * 7 + j) % 50 for j in range(prompt_len)]
        seqs.append(Sequence(i, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=ignore_eos)))
    return seqs


def sample_inputs(batch, fed):
    """(seq, position, input token) of each sample row; `fed` resolves PLACEHOLDER inputs (async)."""
    out = []
    for row, index in zip(batch.sample_rows, batch.sample_token_indices, strict=True):
        seq, token = batch.seqs[row], batch.input_ids[index]
        if token == PLACEHOLDER:
            token = fed[seq.seq_id]
        out.append((seq.seq_id, batch.positions[index], token))
    return out


def run_sync(sched, seqs):
    for s in seqs:
        sched.add(s)
    while sched.has_unfinished():
        batch = sched.schedule()
        assert batch is not None
        assert PLACEHOLDER not in batch.input_ids
        sched.update(batch, [fake_token(*x) for x in sample_inputs(batch, {})])


def run_async(sched, seqs):
    """One step in flight: schedule n+1, 'launch' it (tokens computed with the device feed), resolve n."""
    for s in seqs:
        sched.add(s)
    launched = None  # (AdvancedBatch, tokens)
    num_fed = 0
    while sched.has_unfinished() or launched is not None:
        batch = sched.schedule()
        new = None
        if batch is not None:
            fed = {}
            if launched is not None:  # the device's last_tokens: the launched step's sampled tokens
                advanced, tokens = launched
                fed = {slot[0].seq_id: t for slot, t in zip(advanced.slots, tokens, strict=True) if slot}
            for i, token in enumerate(batch.input_ids):
                if token == PLACEHOLDER:
                    assert batch.seqs[_row_of(batch, i)].seq_id in fed, "placeholder not fed by the step"
                    num_fed += 1
            tokens = [fake_token(*x) for x in sample_inputs(batch, fed)]
            new = (sched.advance(batch), tokens)
        if launched is not None:
            sched.resolve(*launched)
        launched = new
    return num_fed


def _row_of(batch, token_index):
    starts = batch.query_start
    return next(r for r in range(len(batch.seqs)) if starts[r] <= token_index < starts[r + 1])


def same_outputs_as_sync(reference, candidate, run_candidate, requests):
    """Run `requests` on reference with run_sync and on candidate with run_candidate; every sequence must
    end with the same tokens and finish reason, finished. A request set the reference rejects must be
    rejected by the candidate too; then there is nothing to compare: returns None, else the candidate's
    sequences."""
    ref_seqs, seqs = make_seqs(requests), make_seqs(requests)
    try:
        run_sync(reference, ref_seqs)
    except RequestRejected:
        with pytest.raises(RequestRejected):
            run_candidate(candidate, seqs)
        return None
    run_candidate(candidate, seqs)
    for a, b in zip(ref_seqs, seqs, strict=True):
        assert (a.output_token_ids, a.finish_reason) == (b.output_token_ids, b.finish_reason)
        assert b.status is SequenceStatus.FINISHED
    return seqs


REQUEST = st.tuples(st.integers(1, 14), st.integers(1, 12), st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    block_size=st.sampled_from([2, 4]),
    num_blocks=st.integers(6, 24),
    max_num_seqs=st.integers(1, 5),
    budget=st.integers(2, 24),
    requests=st.lists(REQUEST, min_size=1, max_size=10),
)
def test_async_scheduling_gives_the_same_outputs_as_sync(
    block_size, num_blocks, max_num_seqs, budget, requests
):
    sync_sched = make_sched(num_blocks, block_size, max_num_seqs, budget)
    async_sched = make_sched(num_blocks, block_size, max_num_seqs, budget)
    async_seqs = same_outputs_as_sync(sync_sched, async_sched, run_async, requests)
    if async_seqs is None:
        return
    assert all(PLACEHOLDER not in b.output_token_ids for b in async_seqs)
    manager = async_sched.block_manager
    assert manager.num_free_blocks == manager.num_usable_blocks


def test_a_stop_token_drops_the_step_already_scheduled_after_it():
    sched = make_sched(16, 4, 4, 16)
    seq = make_seqs([(3, 10, False)])[0]
    sched.add(seq)
    prefill = sched.advance(sched.schedule())
    decode = sched.schedule()  # scheduled before the prefill's token is known
    assert decode.kind == "decode" and decode.input_ids == [PLACEHOLDER]
    in_flight = sched.advance(decode)
    assert seq.output_token_ids == [PLACEHOLDER, PLACEHOLDER]
    assert [s.seq_id for s in sched.resolve(prefill, [EOS])] == [0]
    assert (seq.output_token_ids, seq.finish_reason) == ([EOS], "stop")
    assert sched.block_manager.num_used_blocks == 0
    assert sched.resolve(in_flight, [123]) == []  # the extra step's token is dropped
    assert seq.output_token_ids == [EOS] and not sched.has_unfinished()


def test_a_length_limit_stops_at_advance_and_reports_at_resolve():
    sched = make_sched(16, 4, 4, 16)
    seq = make_seqs([(3, 1, True)])[0]
    sched.add(seq)
    advanced = sched.advance(sched.schedule())
    assert seq.finish_reason == "length" and sched.block_manager.num_used_blocks == 0
    assert sched.schedule() is None  # nothing scheduled past the limit
    assert sched.resolve(advanced, [77]) == [seq] and seq.output_token_ids == [77]


def test_abort_between_advance_and_resolve_drops_the_token():
    sched = make_sched(16, 4, 4, 16)
    seq = make_seqs([(3, 5, True)])[0]
    sched.add(seq)
    advanced = sched.advance(sched.schedule())
    sched.abort(seq.seq_id)
    assert sched.resolve(advanced, [77]) == []
    assert seq.finish_reason == "abort" and seq.output_token_ids == [PLACEHOLDER]


# ----- the engine ---------------------------------------------------------------------------------


def engine(async_scheduling, **kw):
    kw.setdefault("max_num_seqs", 4)
    kw.setdefault("max_model_len", 96)
    return LLMEngine(
        EngineConfig(
            model="tiny",
            graph_backend="sim",
            cuda_graph_sizes=(1, 2, 4),
            async_scheduling=async_scheduling,
            **kw,
        )
    )


def run_engine(eng, prompts, params):
    ids = [eng.add_request(p, params[i]) for i, p in enumerate(prompts)]
    out = {i: [] for i in ids}
    reasons = {}
    while eng.has_unfinished():
        for o in eng.step():
            assert o.seq_id not in reasons, "a token after the request finished"
            out[o.seq_id].append(o.new_token_id)
            if o.finished:
                reasons[o.seq_id] = o.finish_reason
    return [(out[i], reasons[i]) for i in ids]


@pytest.fixture(scope="module")
def engines():
    return engine(True), engine(False)


def test_async_engine_equals_sync_with_stops_sampling_and_more_requests_than_seats(engines):
    fast, plain = engines
    probe = run_engine(plain, ["probe"], [SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)])
    stop_on = probe[0][0][5]  # a token greedy decoding really produces mid-way
    prompts = [f"request {i}" for i in range(7)]  # 7 requests, 4 seats: admissions while others decode
    params = [
        SamplingParams(temperature=0.0, max_tokens=3 + i, ignore_eos=True, stop_token_ids=(stop_on,))
        if i % 3 == 0
        else SamplingParams(temperature=0.8, top_k=20, seed=i, max_tokens=4 + i, ignore_eos=True)
        for i in range(6)
    ] + [SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, stop_token_ids=(stop_on,))]
    prompts[6] = "probe"
    sync_out = run_engine(plain, prompts, params)
    assert run_engine(fast, prompts, params) == sync_out
    assert sync_out[6] == (probe[0][0][:6], "stop")  # stopped on the token, which is kept


def test_async_engine_feeds_tokens_on_the_device(engines):
    fast, _ = engines
    fed = []
    pack = fast._pack_decode

    def spy(batch):
        step = pack(batch)
        fed.append(step.feed_rows.tolist())
        return step

    fast._pack_decode = spy
    try:
        run_engine(fast, ["x", "y"], [SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)] * 2)
    finally:
        del fast._pack_decode
    assert fed and all(row >= 0 for step in fed for row in step)  # the host never knew the input token


def test_async_step_returns_the_previous_steps_outputs():
    eng = engine(True)
    eng.add_request("hello", SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    assert eng.step() == []  # the prefill is launched; its token is not out yet
    first = eng.step()
    assert len(first) == 1 and not first[0].finished
    rest = []
    while eng.has_unfinished():
        rest += eng.step()
    assert [o.finished for o in rest] == [False, True]


def test_abort_with_a_step_in_flight_keeps_the_others_exact(engines):
    fast, plain = engines
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    alone = run_engine(plain, ["keep me"], [params])[0]
    keep = fast.add_request("keep me", params)
    drop = fast.add_request("drop me", params)
    got = []
    for _ in range(4):
        got += [o for o in fast.step() if o.seq_id == keep]
    fast.abort(drop)
    assert fast.scheduler.num_running == 1
    while fast.has_unfinished():
        outs = fast.step()
        assert all(o.seq_id != drop for o in outs)
        got += outs
    assert ([o.new_token_id for o in got], got[-1].finish_reason) == alone
    assert fast.scheduler.block_manager.num_used_blocks == 0


def test_preemption_with_async_scheduling_loses_nothing():
    small = {"cpu_kv_cache_bytes": 40 * 1024, "max_model_len": 64, "max_num_seqs": 8}
    fast = engine(True, **small)
    plain = engine(False, enforce_eager=True, **small)  # graph == eager is tested elsewhere
    params = [SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)] * 8
    prompts = [f"request {i} " * 3 for i in range(8)]
    out = run_engine(fast, prompts, params)
    assert fast.scheduler.num_preemptions > 0
    assert out == run_engine(plain, prompts, params)
    assert fast.scheduler.block_manager.num_used_blocks == 0
