"""How a decoder splits per rank (heads, KV replication, MLP rows, vocabulary padding), the errors for
sizes that do not split, and the one-rank model: exactly the unsplit layers, no collectives."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from graphrun.errors import ConfigError
from graphrun.llm.kv_cache import KVCacheSpec
from graphrun.llm.models.decoder import DecoderLM
from graphrun.llm.parallel.config import ParallelConfig
from graphrun.llm.parallel.group import ParallelGroup
from graphrun.llm.parallel.shards import ShardError, ShardLayout
from graphrun.llm.preset_configs import preset_config

TINY = preset_config("tiny")  # 4 heads, 2 KV heads, intermediate 128, vocab 512


def _layout(world_size: int, rank: int, **changes: int) -> ShardLayout:
    return ShardLayout.from_model(dataclasses.replace(TINY, **changes), ParallelConfig(world_size, rank))


def test_heads_and_mlp_rows_split_evenly():
    layout = _layout(2, 1)
    assert (layout.num_heads, layout.head_start, layout.q_rows()) == (2, 2, (32, 64))
    assert (layout.num_kv_heads, layout.kv_head_start, layout.kv_rows()) == (1, 1, (16, 32))
    assert layout.intermediate_rows() == (64, 128)


def test_fewer_kv_heads_than_ranks_are_replicated_on_the_ranks_that_read_them():
    """2 KV heads on 4 ranks: query heads 0-1 (ranks 0, 1) read KV head 0, heads 2-3 read KV head 1."""
    starts = [_layout(4, rank).kv_head_start for rank in range(4)]
    assert starts == [0, 0, 1, 1]
    assert {_layout(4, rank).num_kv_heads for rank in range(4)} == {1}


def test_the_last_rank_pads_a_vocabulary_that_does_not_split():
    first, last = _layout(2, 0, vocab_size=301), _layout(2, 1, vocab_size=301)
    assert (first.vocab_rows, first.vocab_real_rows()) == (151, (0, 151))
    assert (last.vocab_rows, last.vocab_real_rows()) == (151, (151, 301))


@pytest.mark.parametrize(
    ("world_size", "changes", "dimension"),
    [
        (3, {}, "num_heads"),
        (4, {"intermediate_size": 130}, "intermediate_size"),
        (3, {"num_heads": 6, "num_kv_heads": 2}, "num_kv_heads"),
        (4, {"num_heads": 12, "num_kv_heads": 6}, "num_kv_heads"),
    ],
)
def test_a_size_that_does_not_split_names_the_dimension(world_size, changes, dimension):
    with pytest.raises(ShardError, match=dimension) as caught:
        _layout(world_size, 0, **changes)
    assert f"tensor parallel size {world_size}" in str(caught.value)


@pytest.mark.parametrize(("world_size", "rank"), [(0, 0), (2, 2), (2, -1)])
def test_a_bad_rank_description_is_refused(world_size, rank):
    with pytest.raises(ConfigError):
        ParallelConfig(world_size, rank)


def test_more_than_one_rank_needs_a_process_group():
    with pytest.raises(ConfigError, match="process group"):
        ParallelGroup(ParallelConfig(2, 0))


def test_one_rank_collectives_return_their_input_untouched():
    group, t = ParallelGroup.single(), torch.randn(3, 4)
    assert group.all_reduce(t) is t
    assert group.all_gather(t) is t


def test_one_rank_builds_the_unsplit_layers():
    config = dataclasses.replace(TINY, attention_bias=True)
    model = DecoderLM(config)
    assert type(model.embed_tokens) is nn.Embedding
    assert model.embed_tokens.weight.shape == (config.vocab_size, config.hidden_size)
    assert model.lm_head.weight.shape == (config.vocab_size, config.hidden_size)
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    assert type(attn.qkv_proj) is nn.Linear and type(attn.o_proj) is nn.Linear
    assert attn.qkv_proj.weight.shape == ((4 + 2 * 2) * 16, 64)
    assert attn.o_proj.bias is not None and attn.o_proj.weight.shape == (64, 64)
    assert mlp.gate_up_proj.weight.shape == (256, 64) and mlp.down_proj.weight.shape == (64, 128)


def test_a_rank_kv_cache_holds_its_own_kv_heads():
    whole = KVCacheSpec.from_model(TINY, dtype=torch.float32)
    per_rank = KVCacheSpec.from_model(TINY, dtype=torch.float32, parallel=ParallelConfig(2, 1))
    assert (whole.num_kv_heads, per_rank.num_kv_heads) == (2, 1)
    assert per_rank.bytes_per_block * 2 == whole.bytes_per_block
