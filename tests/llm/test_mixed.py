"""Mixed steps: prompt chunks ride along decode steps, one row per token, without changing any output.

Scheduler level: the fake model of test_async_scheduling (its token depends on the sequence, the position
and the token fed in) runs random traffic with mixing on and off, synchronous and asynchronous; outputs
must agree and every mixed batch must respect the budget, the row cap and the decode-rows-first order.
Engine level: the tiny preset, graphs through the simulator and eager, mixing on vs off token for token.
"""

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_async_scheduling import REQUEST, run_async, run_sync, same_outputs_as_sync

from graphrun.errors import ConfigError
from graphrun.llm.block_manager import BlockManager
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.scheduler import Scheduler, SchedulerConfig
from graphrun.llm.sequence import Sequence

EOS = 2


def make_sched(num_blocks, block_size, max_num_seqs, budget, mixed=0, cap=None, ceiling=None):
    config = SchedulerConfig(
        48, max_num_seqs, budget, block_size, mixed_prefill_tokens=mixed, max_mixed_rows=cap,
        max_mixed_prefill_tokens=ceiling,
    )  # fmt: skip
    return Scheduler(config, BlockManager(num_blocks, block_size), (EOS,))


class Checked(Scheduler):
    """A scheduler that checks every mixed batch it builds and counts batch kinds."""

    kinds: Counter
    grown: int  # mixed batches that carried more prompt tokens than the floor budget

    def schedule(self):
        ready = {s.seq_id for s in self._running if s.num_uncomputed_tokens == 1}
        queued = self._queued_prompt_tokens()
        batch = super().schedule()
        if batch is None:
            return None
        self.kinds[batch.kind] += 1
        if batch.kind == "mixed":
            cfg = self.config
            was_ready = [s.seq_id in ready for s in batch.seqs]
            num_decode = sum(was_ready)
            assert num_decode >= 1 and all(was_ready[:num_decode]), "decode rows exist and come first"
            assert batch.num_new_tokens[:num_decode] == [1] * num_decode
            budget = cfg.mixed_budget(queued)
            assert batch.num_tokens - num_decode <= budget
            assert budget <= cfg.largest_mixed_budget
            self.grown += batch.num_tokens - num_decode > cfg.mixed_prefill_tokens
            assert cfg.max_mixed_rows is None or batch.num_tokens <= cfg.max_mixed_rows
            assert len({s.seq_id for s in batch.seqs}) == len(batch.seqs), "one row per sequence"
        return batch


def checked(num_blocks, block_size, max_num_seqs, budget, mixed, cap, ceiling=None):
    plain = make_sched(num_blocks, block_size, max_num_seqs, budget, mixed, cap, ceiling)
    sched = Checked(plain.config, plain.block_manager, (EOS,))
    sched.kinds = Counter()
    sched.grown = 0
    return sched


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    block_size=st.sampled_from([2, 4]),
    num_blocks=st.integers(6, 24),
    max_num_seqs=st.integers(1, 5),
    budget=st.integers(2, 24),
    mixed=st.integers(1, 12),
    cap=st.one_of(st.none(), st.integers(1, 12)),
    growth=st.one_of(st.none(), st.integers(0, 16)),
    asynchronous=st.booleans(),
    requests=st.lists(REQUEST, min_size=1, max_size=10),
)
def test_mixed_scheduling_gives_the_same_outputs_as_alternating(
    block_size, num_blocks, max_num_seqs, budget, mixed, cap, growth, asynchronous, requests
):
    plain = make_sched(num_blocks, block_size, max_num_seqs, budget)
    # a growing budget starts from a small floor, so that short random queues outgrow it often
    floor, ceiling = (mixed, None) if growth is None else (max(1, mixed // 3), mixed + growth)
    mixing = checked(num_blocks, block_size, max_num_seqs, budget, floor, cap, ceiling)
    run = run_async if asynchronous else run_sync
    if same_outputs_as_sync(plain, mixing, run, requests) is None:
        return
    MIXED_SEEN.update(mixing.kinds)
    MIXED_SEEN["grown"] += mixing.grown
    manager = mixing.block_manager
    assert manager.num_free_blocks == manager.num_usable_blocks


MIXED_SEEN: Counter = Counter()


def test_the_random_traffic_above_did_build_mixed_batches():
    assert MIXED_SEEN["mixed"] > 20 and MIXED_SEEN["decode"] > 20 and MIXED_SEEN["prefill"] > 20
    assert MIXED_SEEN["grown"] > 10  # the queue-following budget was exercised, above its floor


def test_the_mixed_budget_follows_the_queue_between_floor_and_ceiling():
    fixed = SchedulerConfig(48, mixed_prefill_tokens=8)
    assert [fixed.mixed_budget(q) for q in (0, 10, 10_000)] == [8, 8, 8]
    grows = SchedulerConfig(48, mixed_prefill_tokens=8, max_mixed_prefill_tokens=40)
    assert [grows.mixed_budget(q) for q in (0, 32, 33, 100, 160, 10_000)] == [8, 8, 9, 25, 40, 40]
    assert SchedulerConfig(48, mixed_prefill_tokens=0, max_mixed_prefill_tokens=40).mixed_budget(999) == 0
    assert (fixed.largest_mixed_budget, grows.largest_mixed_budget) == (8, 40)
    assert SchedulerConfig(48, mixed_prefill_tokens=0, max_mixed_prefill_tokens=40).largest_mixed_budget == 0
    with pytest.raises(ConfigError, match="max_mixed_prefill_tokens"):
        SchedulerConfig(48, mixed_prefill_tokens=8, max_mixed_prefill_tokens=4)
    with pytest.raises(ConfigError, match="max_mixed_prefill_tokens"):
        EngineConfig(mixed_prefill_tokens=8, max_mixed_prefill_tokens=4)


def test_a_burst_of_prompts_is_prefilled_in_larger_mixed_steps():
    """Eight 40-token prompts arrive while one stream decodes: the mixed steps carry a quarter of the
    queue each (down to the floor), so the burst clears in fewer steps than the fixed budget takes."""

    def steps_to_clear(ceiling):
        sched = make_sched(256, 4, 16, 64, mixed=8, ceiling=ceiling)
        sched.add(Sequence(0, _prompt(3), SamplingParams(max_tokens=45, ignore_eos=True)))
        sched.update(sched.schedule(), [77])
        for i in range(1, 9):
            sched.add(Sequence(i, _prompt(40, 10 + i), SamplingParams(max_tokens=8, ignore_eos=True)))
        prompts = []
        while sched._queued_prompt_tokens():
            ready = {s.seq_id for s in sched._running if s.num_uncomputed_tokens == 1}
            batch = sched.schedule()
            assert batch.kind == "mixed"
            rows = zip(batch.seqs, batch.num_new_tokens, strict=True)
            prompts.append(sum(n for seq, n in rows if seq.seq_id not in ready))
            sched.update(batch, [77] * len(batch.sample_rows))
        return prompts

    fixed, grown = steps_to_clear(None), steps_to_clear(200)
    assert len(fixed) == 40 and len(grown) < 15
    assert grown[0] == 80  # 320 queued tokens / 4 steps


def _prompt(n, start=10):
    return [start + j % 50 for j in range(n)]


def test_a_waiting_prompt_rides_along_decode_in_budget_sized_chunks():
    sched = make_sched(64, 4, 4, 64, mixed=5)
    first = Sequence(0, _prompt(3), SamplingParams(max_tokens=20, ignore_eos=True))
    sched.add(first)
    sched.update(sched.schedule(), [77])  # prefill; first now decodes
    second = Sequence(1, _prompt(12), SamplingParams(max_tokens=4, ignore_eos=True))
    sched.add(second)
    chunks = []
    for _ in range(3):
        batch = sched.schedule()
        assert batch.kind == "mixed" and batch.seqs[0] is first and batch.num_new_tokens[0] == 1
        chunks.append(batch.num_new_tokens[1])
        assert batch.positions[1:] == list(range(sum(chunks) - chunks[-1], sum(chunks)))
        sampled = [77] + ([88] if len(batch.sample_rows) == 2 else [])
        assert batch.sample_rows == ([0, 1] if sum(chunks) == 12 else [0])
        sched.update(batch, sampled)
    assert chunks == [5, 5, 2]
    batch = sched.schedule()
    assert batch.kind == "decode" and [s.seq_id for s in batch.seqs] == [0, 1]
    assert second.output_token_ids == [88]


def test_no_room_under_the_row_cap_falls_back_to_alternating():
    sched = make_sched(64, 4, 4, 64, mixed=8, cap=2)
    for i in range(2):
        sched.add(Sequence(i, _prompt(3, 10 + i), SamplingParams(max_tokens=20, ignore_eos=True)))
    sched.update(sched.schedule(), [5, 6])  # both prefill together; both decode now
    sched.add(Sequence(2, _prompt(6), SamplingParams(max_tokens=2, ignore_eos=True)))
    kinds = []
    for _ in range(3):
        batch = sched.schedule()
        kinds.append(batch.kind)
        sched.update(batch, [7] * len(batch.sample_rows))
    assert "mixed" not in kinds and "prefill" in kinds  # two decode rows fill the cap: no starvation


def test_mixing_is_off_at_zero_and_negative_settings_are_rejected():
    sched = make_sched(64, 4, 4, 64, mixed=0)
    sched.add(Sequence(0, _prompt(3), SamplingParams(max_tokens=20, ignore_eos=True)))
    sched.update(sched.schedule(), [5])
    sched.add(Sequence(1, _prompt(3), SamplingParams(max_tokens=2, ignore_eos=True)))
    assert sched.schedule().kind in ("prefill", "decode")
    with pytest.raises(ConfigError, match="mixed_prefill_tokens"):
        SchedulerConfig(48, mixed_prefill_tokens=-1)
    with pytest.raises(ConfigError, match="mixed_prefill_tokens"):
        EngineConfig(mixed_prefill_tokens=-1)


# ----- the engine ---------------------------------------------------------------------------------


def engine(mixed, **kw):
    kw.setdefault("max_num_seqs", 4)
    kw.setdefault("max_model_len", 96)
    kw.setdefault("graph_backend", "sim")
    if kw["graph_backend"] == "sim":
        kw.setdefault("cuda_graph_sizes", (1, 2, 4, 8))
        kw.setdefault("cuda_graph_max_prefill_tokens", 128)  # prefill and piecewise ladders up to 128
    return LLMEngine(EngineConfig(model="tiny", mixed_prefill_tokens=mixed, **kw))


def staggered(eng, prompts, params, every=3):
    """Add a request every `every` steps, so prompts arrive while others decode; tokens per request."""
    out: dict[int, list[int]] = {}
    pending = list(enumerate(prompts))
    ids: list[int] = []
    steps = 0
    while pending or eng.has_unfinished():
        if pending and steps % every == 0:
            i, prompt = pending.pop(0)
            ids.append(eng.add_request(prompt, params[i]))
            out[ids[-1]] = []
        for o in eng.step():
            out[o.seq_id].append(o.new_token_id)
        steps += 1
    return [out[i] for i in ids]


def count_kinds(eng):
    kinds: Counter = Counter()
    schedule = eng.scheduler.schedule

    def spy():
        batch = schedule()
        if batch is not None:
            kinds[batch.kind] += 1
        return batch

    eng.scheduler.schedule = spy
    return kinds


PROMPTS = ["a first request", "then a much longer prompt that needs several chunks", "short", "x" * 40]


def params_for(i):
    if i % 2:
        return SamplingParams(temperature=0.9, top_k=25, seed=i, max_tokens=10, ignore_eos=True)
    return SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.mark.parametrize("backend", ["sim", "eager"])
def test_engine_mixing_gives_the_same_tokens(backend):
    kw = {"enforce_eager": True} if backend == "eager" else {}
    mixing, plain = engine(8, **kw), engine(0, **kw)
    kinds = count_kinds(mixing)
    params = [params_for(i) for i in range(len(PROMPTS))]
    assert staggered(mixing, PROMPTS, params) == staggered(plain, PROMPTS, params)
    assert kinds["mixed"] >= 3
    assert mixing.scheduler.block_manager.num_used_blocks == 0
    if backend == "sim":
        runner = mixing.decode_graphs.runners["sampling"]
        assert runner.stats.eager_fallback == {}  # every mixed step had a rung (rows <= the top rung)


def test_engine_mixing_with_sync_scheduling_and_preemption():
    small = {"cpu_kv_cache_bytes": 40 * 1024, "max_model_len": 64, "max_num_seqs": 8}
    mixing = engine(6, async_scheduling=False, **small)
    plain = engine(0, enforce_eager=True, graph_backend="auto", **small)
    params = [SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)] * 8
    prompts = [f"request {i} " * 3 for i in range(8)]
    assert staggered(mixing, prompts, params, every=2) == staggered(plain, prompts, params, every=2)
    assert mixing.scheduler.num_preemptions > 0


@pytest.mark.parametrize("backend", ["sim", "eager"])
def test_a_mixed_step_above_the_top_rung_runs_eager_with_varlen_attention(backend):
    """A prompt budget larger than the top decode rung: such steps take the eager path (decode rows in one
    decode-kernel call, prompt chunks by varlen attention) and every token equals the alternating engine's.
    Mode full: with piecewise graphs (test_piecewise_graph.py) such steps replay those instead."""
    kw = {"enforce_eager": True} if backend == "eager" else {"cuda_graph_mode": "full"}
    kw["max_model_len"] = 192
    mixing, plain = engine(32, **kw), engine(0, **kw)
    calls = []
    run = mixing._run_mixed_eager

    def spy(batch):
        calls.append((batch.num_leading_single_rows(), batch.num_tokens))
        return run(batch)

    mixing._run_mixed_eager = spy
    params = [params_for(i) for i in range(len(PROMPTS))]
    prompts = [p * 3 for p in PROMPTS]
    assert staggered(mixing, prompts, params, every=2) == staggered(plain, prompts, params, every=2)
    assert any(d >= 1 and n > 8 for d, n in calls)  # decode rows and a chunk, above the top rung (8)
    assert mixing.scheduler.block_manager.num_used_blocks == 0
