"""Checkpoint loading (round trips, every error names its tensor), model building, seeded init, tokenizers."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from graphrun.llm.config import ModelConfig
from graphrun.llm.layers.rotary import RotaryEmbedding
from graphrun.llm.presets import load_model, preset_config
from graphrun.llm.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, TokenizerError, load_tokenizer
from graphrun.llm.weights import CheckpointError, build_model, load_weights, random_init, read_model_config


def _model(seed=1, **overrides):
    config = dataclasses.replace(preset_config("tiny"), **overrides)
    model = build_model(config, torch.float32, "cpu")
    random_init(model, seed)
    return model


def _hf_tensors(model) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face names, q/k/v and gate/up split apart."""
    config, out = model.config, {}
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    for name, param in model.named_parameters():
        hf = name if name.startswith("lm_head") else f"model.{name}"
        if "qkv_proj" in hf:
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), param.split([q, kv, kv]), strict=True):
                out[hf.replace("qkv_proj", part)] = piece
        elif "gate_up_proj" in hf:
            for part, piece in zip(("gate_proj", "up_proj"), param.chunk(2), strict=True):
                out[hf.replace("gate_up_proj", part)] = piece
        else:
            out[hf] = param
    return {name: t.detach().clone().contiguous() for name, t in out.items()}


def _hf_config_dict(config: ModelConfig) -> dict:
    return {
        "architectures": [config.architecture],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},  # transformers 5 layout
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": list(config.eos_token_ids),
    }


def _save(folder, tensors):
    folder.mkdir(exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def _assert_same_weights(a, b):
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def _fresh(model):
    return build_model(model.config, torch.float32, "cpu")


def test_round_trip_single_file(tmp_path):
    model = _model()
    loaded = _fresh(model)
    load_weights(loaded, _save(tmp_path / "ckpt", _hf_tensors(model)))
    _assert_same_weights(model, loaded)


def test_round_trip_sharded_with_index(tmp_path):
    model, folder = _model(attention_bias=True), tmp_path / "sharded"
    folder.mkdir()
    tensors = _hf_tensors(model)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(folder / file))
    weight_map = {n: file for file, shard_names in shards.items() for n in shard_names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = _fresh(model)
    load_weights(loaded, folder)
    _assert_same_weights(model, loaded)


def test_tied_head_may_be_absent_or_present(tmp_path):
    model = _model(tie_word_embeddings=True)
    tensors = _hf_tensors(model)
    assert "lm_head.weight" not in tensors
    loaded = _fresh(model)
    load_weights(loaded, _save(tmp_path / "without", tensors))
    assert loaded.lm_head.weight is loaded.embed_tokens.weight
    _assert_same_weights(model, loaded)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    load_weights(_fresh(model), _save(tmp_path / "with", tensors))


def test_derived_rotary_tensors_are_ignored(tmp_path):
    model = _model()
    tensors = _hf_tensors(model) | {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}
    load_weights(_fresh(model), _save(tmp_path / "ckpt", tensors))


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        load_weights(_model(), tmp_path / "nowhere")


def test_folder_without_safetensors(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors"):
        load_weights(_model(), tmp_path)


def test_index_listing_a_missing_shard(tmp_path):
    weight_map = {"model.norm.weight": "model-00009.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"model-00009\.safetensors"):
        load_weights(_model(), tmp_path)


@pytest.mark.parametrize("name", ["model.layers.1.mlp.up_proj.weight", "lm_head.weight", "model.norm.weight"])
def test_missing_tensor_is_named(tmp_path, name):
    model = _model()
    tensors = _hf_tensors(model)
    del tensors[name]
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_weights(_fresh(model), _save(tmp_path / "ckpt", tensors))


def test_unexpected_tensor_is_named(tmp_path):
    model = _model()
    tensors = _hf_tensors(model) | {"model.layers.0.mlp.up_proj.bias": torch.zeros(128)}
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.mlp\.up_proj\.bias'"):
        load_weights(_fresh(model), _save(tmp_path / "ckpt", tensors))


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    model = _model()
    tensors = _hf_tensors(model)
    tensors["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(48, 64)
    with pytest.raises(CheckpointError, match=r"k_proj\.weight' has shape \[48, 64\], expected \[32, 64\]"):
        load_weights(_fresh(model), _save(tmp_path / "ckpt", tensors))


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = _model(seed=7, attention_bias=True), _model(seed=7, attention_bias=True), _model(seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    _assert_same_weights(a, b)
    assert not torch.equal(a.embed_tokens.weight, c.embed_tokens.weight)
    assert 0.015 < a.layers[0].mlp.down_proj.weight.std().item() < 0.025
    assert torch.equal(a.layers[1].self_attn.k_norm.weight, torch.ones(16))
    assert torch.equal(a.norm.weight, torch.ones(64))
    assert not a.layers[0].self_attn.qkv_proj.bias.any()


def test_build_model_dtype_device_tying_and_rope_table():
    config = dataclasses.replace(preset_config("tiny"), tie_word_embeddings=True)
    model = build_model(config, "bfloat16", "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())
    assert model.lm_head.weight is model.embed_tokens.weight
    # rebuilt after the meta-device construction, and kept in float32
    assert torch.equal(model.rotary.cos_cache, RotaryEmbedding(config).cos_cache)


def test_read_model_config_understands_both_rope_layouts(tmp_path):
    raw = _hf_config_dict(preset_config("llama-3.2-1b-shape")) | {"architectures": ["LlamaForCausalLM"]}
    raw["rope_parameters"] = {"rope_theta": 500000.0, **preset_config("llama-3.2-1b-shape").rope_scaling}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = read_model_config(tmp_path)
    assert config.rope_theta == 500000.0 and config.rope_scaling["rope_type"] == "llama3"
    assert config.rope_scaling["factor"] == 32.0 and "rope_theta" not in config.rope_scaling
    legacy = {k: v for k, v in raw.items() if k != "rope_parameters"}
    legacy |= {"rope_theta": 1000.0, "rope_scaling": None}
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    assert read_model_config(tmp_path).rope_theta == 1000.0
    with pytest.raises(CheckpointError, match=r"config\.json"):
        read_model_config(tmp_path / "absent")


def _word_level_tokenizer() -> RustTokenizer:
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "<|end|>": 5}
    tokenizer = RustTokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.add_special_tokens(["<s>", "</s>", "<|end|>"])
    return tokenizer


def test_hf_tokenizer_from_a_local_tokenizer_json(tmp_path):
    _word_level_tokenizer().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": "<s>"}, "eos_token": "</s>"})
    )
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 2]}))
    tokenizer = load_tokenizer(tmp_path)
    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.encode("hello world hello") == [3, 4, 3]
    assert tokenizer.decode([1, 3, 4, 2]) == "hello world"  # special tokens skipped
    assert tokenizer.bos_token_id == 1
    assert tokenizer.eos_token_ids == (5, 2)
    assert tokenizer.vocab_size == 6


def test_missing_tokenizer_json_is_named(tmp_path):
    with pytest.raises(TokenizerError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)


def test_byte_tokenizer_round_trips_unicode():
    tokenizer = ByteTokenizer()
    text = "héllo, wörld — 日本語 🙂"
    ids = tokenizer.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([tokenizer.bos_token_id, *ids, *tokenizer.eos_token_ids]) == text
    assert isinstance(tokenizer, Tokenizer)


def test_byte_tokenizer_decodes_any_model_id():
    tokenizer = ByteTokenizer(vocab_size=512)
    assert tokenizer.decode([256 + ord("h"), 256 + ord("i")]) == "hi"  # ids >= 258 wrap to id % 256
    assert isinstance(tokenizer.decode(torch.randint(0, 512, (100,)).tolist()), str)  # bad UTF-8 is replaced
    with pytest.raises(TokenizerError, match="vocab_size"):
        ByteTokenizer(vocab_size=100)


def test_load_model_from_a_folder(tmp_path):
    model = _model(seed=3)
    folder = _save(tmp_path / "ckpt", _hf_tensors(model))
    (folder / "config.json").write_text(json.dumps(_hf_config_dict(model.config)))
    _word_level_tokenizer().save(str(folder / "tokenizer.json"))
    loaded, tokenizer, config = load_model(folder, torch.float32, "cpu")
    assert isinstance(tokenizer, HFTokenizer)
    assert config == model.config
    _assert_same_weights(model, loaded)
