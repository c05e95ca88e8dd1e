"""The attention backend: chosen once from the device and the Triton switch, reached only through
AttentionOp, and dispatching each kind of step the way the model used to."""

import dataclasses
import importlib.util

import pytest
import torch

from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.kv_cache import KVCacheSpec, allocate_kv_cache
from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.layers.attention_backend import (
    AttentionOp,
    HeadShape,
    TorchAttentionBackend,
    TritonAttentionBackend,
    select_attention_backend,
)
from graphrun.llm.layers.rotary import RotaryEmbedding
from graphrun.llm.models import DecoderLM
from graphrun.llm.presets import load_model, preset_config


def test_cpu_gets_the_torch_backend():
    assert isinstance(select_attention_backend("cpu"), TorchAttentionBackend)


def test_cuda_gets_triton_unless_it_is_disabled(monkeypatch):
    monkeypatch.setenv("GRAPHRUN_DISABLE_TRITON", "1")
    assert isinstance(select_attention_backend("cuda"), TorchAttentionBackend)
    monkeypatch.setenv("GRAPHRUN_DISABLE_TRITON", "0")
    triton = importlib.util.find_spec("triton") is not None
    want = TritonAttentionBackend if triton else TorchAttentionBackend
    assert isinstance(select_attention_backend(torch.device("cuda", 0)), want)


def test_the_engine_chooses_once_and_every_layer_shares_the_choice():
    engine = LLMEngine(EngineConfig(model="tiny"))
    ops = [m for m in engine.model.modules() if isinstance(m, AttentionOp)]
    assert len(ops) == engine.model_config.num_layers
    assert all(op.backend is engine.attention_backend for op in ops)
    assert engine.attention_backend.name == "torch"  # CPU


def test_attention_op_is_a_leaf_without_weights():
    model = DecoderLM(preset_config("tiny"))
    for op in (m for m in model.modules() if isinstance(m, AttentionOp)):
        assert list(op.children()) == [] and list(op.parameters()) == []


class CountingBackend(TorchAttentionBackend):
    """The torch backend, counting the decode kernel's calls and every attend() by step kind."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.decode_calls = 0

    def decode(self, q, k_cache, v_cache, block_tables, context_lens, scale):
        self.decode_calls += 1
        return super().decode(q, k_cache, v_cache, block_tables, context_lens, scale)

    def attend(self, q, k, v, kv_cache, meta, scale, out=None):
        self.kinds.append("fresh" if meta.causal_fresh else "decode" if meta.is_decode else "varlen")
        return super().attend(q, k, v, kv_cache, meta, scale, out)


def test_every_layer_attends_through_its_backend_and_the_output_is_unchanged():
    counting = CountingBackend()
    model, _, cfg = load_model("tiny", torch.float32, "cpu", attention_backend=counting)
    plain, _, _ = load_model("tiny", torch.float32, "cpu")
    tables = torch.tensor([[1]], dtype=torch.int32)
    meta = AttentionMetadata(torch.tensor([16 + 3]), tables, torch.tensor([4], dtype=torch.int32))
    outs = []
    for m in (model, plain):
        kv = allocate_kv_cache(KVCacheSpec.from_model(cfg, 16, torch.float32), 4, "cpu")
        with torch.inference_mode():
            outs.append(m(torch.tensor([7]), torch.tensor([3]), meta, kv))
    assert counting.kinds == ["decode"] * cfg.num_layers and counting.decode_calls == cfg.num_layers
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_a_fresh_prefill_reads_fused_keys_back_from_the_cache():
    """k, v None (a fused kernel wrote them only to the cache) attends as k, v given."""
    torch.manual_seed(0)
    cfg = preset_config("tiny")
    heads = HeadShape(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    backend, n = TorchAttentionBackend(), 5
    kv = allocate_kv_cache(KVCacheSpec.from_model(cfg, 16, torch.float32), 2, "cpu")[0]
    rope = backend.rope(RotaryEmbedding(cfg), torch.arange(n), torch.float32)
    qkv = torch.randn(n, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim)
    no_table = torch.zeros(1, 1, dtype=torch.int32)
    meta = AttentionMetadata(torch.arange(16, 16 + n), no_table, torch.zeros(1), causal_fresh=True)
    q, k, v = backend.store_qkv(qkv, heads, None, rope, meta.slot_mapping, kv)
    assert k is not None and v is not None
    scale = cfg.head_dim**-0.5
    given = backend.attend(q, k, v, kv, meta, scale)
    torch.testing.assert_close(backend.attend(q, None, None, kv, meta, scale), given, rtol=0, atol=0)


def test_attention_metadata_is_frozen():
    meta = AttentionMetadata(torch.zeros(1), torch.zeros(1, 1), torch.ones(1))
    assert meta.is_decode
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.num_decode = 1  # type: ignore[misc]
    fresh = dataclasses.replace(meta, causal_fresh=True)
    assert not fresh.is_decode and meta.is_decode
