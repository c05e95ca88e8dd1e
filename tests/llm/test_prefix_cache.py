"""Automatic prefix caching: keys by content and prefix, LRU eviction, hits that give a miss's tokens."""

from dataclasses import replace

import pytest
from engine_runs import run_all

from graphrun.llm.block_manager import BlockManager
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.prefix_cache import PrefixCache, block_keys
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.sequence import Sequence

LADDER = (1, 2, 4, 8)
SEEDED = SamplingParams(temperature=1.0, seed=5, max_tokens=10, ignore_eos=True)


def seq(seq_id, tokens):
    return Sequence(seq_id, list(tokens), SamplingParams())


def test_a_key_stands_for_the_block_and_everything_before_it():
    a = block_keys([1, 2, 3, 4, 5, 6], 2, 3)
    b = block_keys([9, 9, 3, 4, 5, 6], 2, 3)
    assert a[1][1] == b[1][1] == (3, 4) and a[1] != b[1]  # same tokens, different prefix
    assert block_keys([1, 2, 3, 4, 7, 7], 2, 3)[:2] == a[:2]


def test_eviction_takes_the_least_recently_released_block():
    cache = PrefixCache()
    keys = block_keys(range(8), 2, 4)
    for block, key in enumerate(keys, start=1):
        cache.register(key, block)
    cache.register(keys[0], 9)  # a key already held stays where it is
    assert cache.lookup(keys[0]) == 1
    for block in (3, 1, 2):
        cache.release(block)
    cache.reclaim(1)  # a hit
    cache.release(1)  # released again: now the most recent
    assert [cache.evict(), cache.evict(), cache.evict(), cache.evict()] == [3, 2, 1, None]
    assert cache.lookup(keys[2]) is None and cache.lookup(keys[3]) == 4


def test_block_manager_reuses_cached_blocks_and_evicts_only_when_the_free_list_is_empty():
    bm = BlockManager(num_blocks=5, block_size=2, prefix_caching=True)  # 4 usable
    a = seq(0, [1, 2, 3, 4, 5])
    bm.allocate(a, 5)
    a.num_computed_tokens = 5
    bm.cache_prompt_blocks(a)  # blocks of [1, 2] and [3, 4]; [5] is partial
    full = a.block_ids[:2]
    bm.free(a)
    assert bm.num_free_blocks == 4 and bm.prefix_cache.num_evictable == 2
    b = seq(1, [1, 2, 3, 4, 8])
    assert bm.match_prefix(b) == full and bm.num_reclaimed(full) == 2
    assert bm.match_prefix(seq(2, [1, 2, 3, 4])) == full[:1]  # the last prompt token is always computed
    bm.take_prefix(b, full)
    assert bm.num_used_blocks == 2 and bm.num_free_blocks == 2
    bm.free(b)
    c = seq(3, range(20, 28))
    bm.allocate(c, 8)  # needs all 4: the free list's 2, then both evictable ones
    assert bm.prefix_cache.num_cached_blocks == 0 and bm.match_prefix(b) == []


def engine(**kw):
    kw.setdefault("max_num_seqs", 8)
    kw.setdefault("max_model_len", 128)
    return LLMEngine(EngineConfig(model="tiny", **kw))


def run(eng, prompts, params=SEEDED):
    return run_all(eng, prompts, params)


SYSTEM = list(range(40, 90))  # 50 tokens: 3 full blocks of 16
PROMPTS = [[*SYSTEM, 7, 8, 9], [*SYSTEM, 200, 201], [*SYSTEM[:32], 5], SYSTEM[:33], SYSTEM[:16] + [1] * 20]


@pytest.mark.parametrize(
    "options",
    [
        {"graph_backend": "sim", "cuda_graph_sizes": LADDER},
        {"enforce_eager": True},
        {"graph_backend": "sim", "cuda_graph_sizes": LADDER, "mixed_prefill_tokens": 8},
        {"enforce_eager": True, "async_scheduling": False},
    ],
)
def test_prefix_hits_give_the_tokens_of_misses(options):
    cold = engine(enable_prefix_caching=False, **options)
    want = [run(cold, [p])[0] for p in PROMPTS]
    warm = engine(**options)
    got = [run(warm, [p])[0] for p in PROMPTS]  # one at a time: each finds its predecessors' blocks
    assert got == want
    assert run(warm, PROMPTS) == want  # all at once: hits on blocks cached by earlier requests
    sched = warm.scheduler
    assert sched.num_prefix_hit_tokens >= 32 * 4 and cold.scheduler.num_prefix_hit_tokens == 0
    greedy = replace(SEEDED, temperature=0.0)
    assert run(warm, PROMPTS, greedy) == run(cold, PROMPTS, greedy)
    assert sched.block_manager.num_used_blocks == 0


def test_eviction_under_a_small_cache_keeps_tokens_right():
    small = {"cpu_kv_cache_bytes": 40 * 1024, "max_model_len": 64, "enforce_eager": True}
    cold, warm = engine(enable_prefix_caching=False, **small), engine(**small)
    prompts = [[i % 7 + 3] * 17 + list(range(i, i + 20)) for i in range(12)]  # 7 distinct first blocks
    assert run(warm, prompts) == run(cold, prompts)
    assert run(warm, prompts[::-1]) == run(cold, prompts[::-1])
    bm = warm.scheduler.block_manager
    assert (
        warm.scheduler.num_prefix_hit_tokens > 0 and bm.prefix_cache.num_cached_blocks <= bm.num_usable_blocks
    )
    assert bm.num_used_blocks == 0 and bm.num_free_blocks == bm.num_usable_blocks


def test_the_cached_token_count_of_a_request_is_on_its_sequence():
    eng = engine(enforce_eager=True)
    run(eng, [[*SYSTEM, 1]])
    seq_id = eng.add_request([*SYSTEM, 2], SEEDED)
    sequence = eng.scheduler._unfinished[seq_id]
    eng.step()
    assert sequence.num_cached_tokens == 48 and eng.num_prefills == 2
