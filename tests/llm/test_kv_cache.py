"""KV cache sizing, budget measurement (mocked CUDA) and the single allocation's per-layer views."""

import pytest
import torch

from graphrun.errors import BackendUnavailableError, ConfigError
from graphrun.llm.block_manager import BlockManager
from graphrun.llm.config import ModelConfig
from graphrun.llm.kv_cache import (
    MIB,
    KVCacheBudgetError,
    KVCacheSpec,
    allocate_kv_cache,
    gpu_kv_budget,
    num_blocks_for_budget,
)
from graphrun.llm.layers.attention import write_kv
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.sequence import Sequence


def test_bytes_per_block():
    spec = KVCacheSpec(num_layers=3, num_kv_heads=2, head_dim=8, block_size=16, dtype=torch.float32)
    assert spec.bytes_per_block == 2 * 3 * 16 * 2 * 8 * 4
    half = KVCacheSpec(3, 2, 8, 16, torch.bfloat16)
    assert half.bytes_per_block * 2 == spec.bytes_per_block


def test_from_model_uses_model_shape_and_dtype():
    cfg = ModelConfig("LlamaForCausalLM", 100, 64, 128, 4, 8, 2, 8, dtype="float16")
    spec = KVCacheSpec.from_model(cfg, block_size=8)
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.block_size) == (4, 2, 8, 8)
    assert spec.dtype is torch.float16
    assert KVCacheSpec.from_model(cfg, dtype=torch.float32).dtype is torch.float32


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"num_layers": 0}, "num_layers"), ({"block_size": -1}, "block_size"), ({"dtype": torch.int8}, "dtype")],
)
def test_spec_validation(kwargs, needle):
    base = {"num_layers": 1, "num_kv_heads": 1, "head_dim": 4}
    with pytest.raises(ConfigError, match=needle):
        KVCacheSpec(**{**base, **kwargs})


def test_num_blocks_for_budget():
    spec = KVCacheSpec(2, 2, 64, 16, torch.float16)  # 16 KiB per block
    per = spec.bytes_per_block
    assert num_blocks_for_budget(spec, 10 * per + per - 1) == 10
    with pytest.raises(
        KVCacheBudgetError, match=r"holds 1 blocks of .* MiB, need at least 2.*gpu-memory-utilization"
    ):
        num_blocks_for_budget(spec, per)
    with pytest.raises(KVCacheBudgetError, match=r"budget -1\.0 MiB holds 0 blocks"):
        num_blocks_for_budget(spec, -MIB)
    assert num_blocks_for_budget(spec, per, min_blocks=1) == 1


def test_gpu_budget_formula(monkeypatch):
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 * gib, 80 * gib))
    # 0.9 * 80 GiB - (80 - 60) GiB in use = 52 GiB
    assert gpu_kv_budget(0.9, "cuda:0") == int(0.9 * 80 * gib) - 20 * gib
    assert gpu_kv_budget(0.2, 0) < 0  # model alone is over the cap


def test_gpu_budget_errors():
    with pytest.raises(ConfigError, match="gpu_memory_utilization must be in"):
        gpu_kv_budget(1.5, "cuda")
    with pytest.raises(BackendUnavailableError, match="not a CUDA device"):
        gpu_kv_budget(0.9, "cpu")


def test_allocation_is_one_zeroed_tensor_viewed_per_layer():
    spec = KVCacheSpec(num_layers=3, num_kv_heads=2, head_dim=4, block_size=4, dtype=torch.float32)
    caches = allocate_kv_cache(spec, num_blocks=5, device="cpu")
    assert len(caches) == 3
    base = caches[0][0].untyped_storage().data_ptr()
    pointers = set()
    for k, v in caches:
        assert k.shape == v.shape == (5, 4, 2, 4) and k.dtype == torch.float32
        assert k.is_contiguous() and v.is_contiguous()
        assert k.untyped_storage().data_ptr() == base  # one allocation
        assert not k.any() and not v.any()
        pointers |= {k.data_ptr(), v.data_ptr()}
    assert len(pointers) == 6  # no two views overlap at their start
    caches[1][1].fill_(1.0)
    assert not caches[1][0].any() and not caches[2][0].any()  # layers and K/V are independent


def test_write_kv_lands_at_block_manager_slots():
    spec = KVCacheSpec(num_layers=1, num_kv_heads=1, head_dim=2, block_size=4, dtype=torch.float32)
    (k_cache, v_cache) = allocate_kv_cache(spec, num_blocks=6, device="cpu")[0]
    bm = BlockManager(6, 4)
    other, s = Sequence(0, [1], SamplingParams()), Sequence(1, list(range(7)), SamplingParams())
    bm.allocate(other, 1)
    bm.allocate(s, 7)
    k = torch.arange(7, dtype=torch.float32)[:, None, None].expand(7, 1, 2).contiguous()
    write_kv(k_cache, v_cache, k, -k, torch.tensor(bm.slots(s, 0, 7)))
    for pos in range(7):
        block, offset = s.block_ids[pos // 4], pos % 4
        assert k_cache[block, offset, 0, 0] == pos and v_cache[block, offset, 0, 1] == -pos
    assert not k_cache[other.block_ids[0]].any() and not k_cache[0].any()


def test_allocation_rejects_zero_blocks():
    spec = KVCacheSpec(1, 1, 4)
    with pytest.raises(KVCacheBudgetError, match="num_blocks must be >= 1, got 0"):
        allocate_kv_cache(spec, 0, "cpu")
