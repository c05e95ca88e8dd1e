"""Presets: `tiny` runs end to end (and its decode step captures), the big shapes are the real models'."""

import pytest
import torch

from graphrun.errors import ConfigError
from graphrun.graphs.backends.sim import SimBackend
from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.models import DecoderLM
from graphrun.llm.presets import PRESETS, load_model, preset_config
from graphrun.llm.tokenizer import ByteTokenizer

BLOCK_SIZE = 4
MAX_BLOCKS = 4  # per sequence


def _caches(config, num_blocks=16):
    shape = (num_blocks, BLOCK_SIZE, config.num_kv_heads, config.head_dim)
    return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(config.num_layers)]


def _tables(num_seqs):
    # sequence i owns blocks i, i + num_seqs, ... : interleaved, so the paging is real
    rows = [[i + j * num_seqs for j in range(MAX_BLOCKS)] for i in range(num_seqs)]
    return torch.tensor(rows, dtype=torch.int32)


def _slots(tables, seq_of_token, positions):
    return tables[seq_of_token, positions // BLOCK_SIZE].long() * BLOCK_SIZE + positions % BLOCK_SIZE


def _prefill(model, caches, prompts):
    """Prefill prompts as one batch; returns the last-token logits (num_seqs, vocab)."""
    lens = [len(p) for p in prompts]
    tables = _tables(len(prompts))
    positions = torch.cat([torch.arange(n) for n in lens])
    seq_of_token = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(lens))
    query_start = [0, *torch.tensor(lens).cumsum(0).tolist()]
    meta = AttentionMetadata(
        slot_mapping=_slots(tables, seq_of_token, positions),
        block_tables=tables,
        context_lens=torch.tensor(lens, dtype=torch.int32),
        query_start=torch.tensor(query_start, dtype=torch.int32),
        query_start_host=query_start,
        context_lens_host=lens,
    )
    hidden = model(torch.cat(prompts), positions, meta, caches)
    return model.compute_logits(hidden[torch.tensor(query_start[1:]) - 1])


def _decode_meta(positions):
    tables = _tables(len(positions))
    slots = _slots(tables, torch.arange(len(positions)), positions)
    return AttentionMetadata(slots, tables, (positions + 1).to(torch.int32))


@torch.no_grad()
def test_tiny_generates_text_on_cpu():
    model, tokenizer, config = load_model("tiny", torch.float32, "cpu", seed=0)
    assert isinstance(model, DecoderLM) and isinstance(tokenizer, ByteTokenizer)
    assert tokenizer.vocab_size == config.vocab_size == 512
    caches = _caches(config)
    prompts = [torch.tensor(tokenizer.encode("hello")), torch.tensor(tokenizer.encode("héé"))]
    next_ids = _prefill(model, caches, prompts).argmax(-1)
    positions = torch.tensor([len(p) for p in prompts])
    generated = [next_ids]
    for _ in range(6):
        logits = model.compute_logits(model(next_ids, positions, _decode_meta(positions), caches))
        assert logits.shape == (2, 512) and torch.isfinite(logits).all()
        next_ids, positions = logits.argmax(-1), positions + 1
        generated.append(next_ids)
    assert all(isinstance(tokenizer.decode(row.tolist()), str) for row in torch.stack(generated, 1))


@torch.no_grad()
def test_preset_weights_follow_the_seed():
    prompt = [torch.tensor([1, 2, 3, 4, 5])]

    def logits(seed):
        model, _, config = load_model("tiny", "float32", "cpu", seed=seed)
        return _prefill(model, _caches(config), prompt)

    assert torch.equal(logits(0), logits(0))
    assert not torch.equal(logits(0), logits(1))


@torch.no_grad()
def test_tiny_decode_step_captures_and_replays_like_eager():
    """The simulator raises on any host read during capture and replays only the recorded ops."""
    model, _, config = load_model("tiny", torch.float32, "cpu")
    caches = _caches(config)
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10, 11, 12])]
    ids = _prefill(model, caches, prompts).argmax(-1)
    positions = torch.tensor([3, 5])
    meta = _decode_meta(positions)
    backend = SimBackend()
    backend.register_static([ids, positions, meta.slot_mapping, meta.block_tables, meta.context_lens])
    backend.register_static([t for pair in caches for t in pair])
    out = {}

    def step():
        out["logits"] = model.compute_logits(model(ids, positions, meta, caches))

    graph = backend.capture(step)  # runs the step for positions 3, 5 once
    next_meta = _decode_meta(positions + 1)
    ids.copy_(out["logits"].argmax(-1))
    for static, fresh in [(positions, positions + 1), (meta.slot_mapping, next_meta.slot_mapping)]:
        static.copy_(fresh)
    meta.context_lens.copy_(next_meta.context_lens)
    eager_caches = [(k.clone(), v.clone()) for k, v in caches]
    expected = model.compute_logits(model(ids, positions, next_meta, eager_caches))
    graph.replay()
    assert torch.equal(out["logits"], expected)
    for (k, v), (ek, ev) in zip(caches, eager_caches, strict=True):
        assert torch.equal(k, ek) and torch.equal(v, ev)


def _num_params(name):
    with torch.device("meta"):
        model = DecoderLM(preset_config(name))
    return sum(p.numel() for p in model.parameters())


def test_qwen3_shape_preset():
    config = preset_config("qwen3-0.6b-shape")
    assert config.architecture == "Qwen3ForCausalLM" and config.qk_norm
    assert (config.hidden_size, config.num_layers, config.intermediate_size) == (1024, 28, 3072)
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size) == (16, 8, 128, 151936)
    assert not config.tie_word_embeddings and config.rope_scaling is None
    assert (config.rope_theta, config.rms_norm_eps, config.max_position_embeddings) == (1e6, 1e-6, 40960)
    # Qwen3-0.6B's 596,049,920 weights plus an untied head of 151936 x 1024
    assert _num_params("qwen3-0.6b-shape") == 596_049_920 + 151936 * 1024


def test_qwen3_8b_shape_preset():
    config = preset_config("qwen3-8b-shape")
    assert config.architecture == "Qwen3ForCausalLM" and config.qk_norm and not config.tie_word_embeddings
    assert (config.hidden_size, config.num_layers, config.intermediate_size) == (4096, 36, 12288)
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size) == (32, 8, 128, 151936)
    assert _num_params("qwen3-8b-shape") == 8_190_735_360  # Qwen3-8B's count (its head is untied)


def test_llama_shape_preset():
    config = preset_config("llama-3.2-1b-shape")
    assert config.architecture == "LlamaForCausalLM" and not config.qk_norm
    assert (config.hidden_size, config.num_layers, config.intermediate_size) == (2048, 16, 8192)
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size) == (32, 8, 64, 128256)
    assert config.tie_word_embeddings and config.rope_theta == 500000.0
    assert config.max_position_embeddings == 131072
    assert config.rope_scaling == {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert _num_params("llama-3.2-1b-shape") == 1_235_814_400  # Llama-3.2-1B's count


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_carry_the_byte_tokenizer_special_ids(name):
    config = preset_config(name)
    assert config.bos_token_id == 256 and config.eos_token_ids == (257,)
    assert config.vocab_size >= 258


def test_preset_config_is_a_private_copy():
    preset_config("llama-3.2-1b-shape").rope_scaling["factor"] = 1.0
    assert preset_config("llama-3.2-1b-shape").rope_scaling["factor"] == 32.0


def test_unknown_name_lists_the_presets(tmp_path):
    with pytest.raises(ConfigError, match=r"qwen3-0\.6b-shape"):
        preset_config("qwen9")
    with pytest.raises(ConfigError, match="tiny"):
        load_model(str(tmp_path / "not-a-folder"), torch.float32, "cpu")
