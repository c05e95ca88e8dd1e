"""The stage output cache: LRU order, the bound, counters; and a cached stage's outputs are copies."""

import pytest
import torch

from graphrun import ConfigError, GraphRunner, Stage
from graphrun.pipeline.cache import OutputCache


def test_lru_bound_evicts_least_recently_used():
    cache = OutputCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)  # evicts b
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.get("b") is None
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions, cache.stats.entries) == (1, 1, 1, 2)


def test_bound_must_be_positive():
    with pytest.raises(ConfigError, match="max_entries"):
        OutputCache(0)


def test_cached_stage_copies_outputs_and_skips_the_runner(registry):
    runner = GraphRunner(lambda x: x * 2, (torch.randn(1, 3),), sizes=[1], backend="sim", registry=registry)
    stage = Stage("double", runner, cache_entries=1)
    x = torch.ones(1, 3)
    first = stage(x, key="obs-1")
    runner(torch.zeros(1, 3))  # a later replay overwrites the runner's static outputs
    again = stage(x * 5, key="obs-1")  # a hit: the stored copy, not a new run
    assert again is first and torch.equal(first, torch.full((1, 3), 2.0))
    assert stage.stats.calls == 1
    stage(x, key="obs-2")  # evicts obs-1
    assert stage.cache is not None and stage.cache.stats.evictions == 1
    assert torch.equal(stage(x * 3, key="obs-1"), torch.full((1, 3), 6.0))  # a miss runs again


def test_uncached_calls_bypass_the_cache(registry):
    runner = GraphRunner(lambda x: x + 1, (torch.randn(1, 3),), sizes=[1], backend="sim", registry=registry)
    stage = Stage("inc", runner, cache_entries=4)
    stage(torch.ones(1, 3))
    assert stage.cache is not None and (stage.cache.stats.hits, stage.cache.stats.misses) == (0, 0)
    assert stage.stats.calls == 1
