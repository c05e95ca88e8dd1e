"""Tensor parallel == one rank: 2 gloo ranks on CPU give the logits and greedy tokens of the unsplit model.

The tiny preset (seeded random weights, drawn whole then sliced per rank) and two HF checkpoints saved
with save_pretrained: Llama with a tied head, and Qwen3 with attention biases (o_proj's bias must be
added once), a single KV head (replicated on both ranks) and an odd vocabulary (the last rank's
vocabulary rows are padded). Both ranks are spawned once per module; each saves its runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tp_greedy import GreedyRun, checkpoint_model, greedy, run_all, tiny_model
from tp_ranks import run_ranks
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from graphrun.llm.parallel.group import ParallelGroup

WORLD_SIZE = 2
ATOL = 1e-4
MODELS = ["tiny", "llama-tied", "qwen3-bias-kv1"]


def _hf_model(name: str) -> torch.nn.Module:
    common = dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, head_dim=16,
        max_position_embeddings=128, initializer_range=0.1, bos_token_id=None, eos_token_id=None,
        pad_token_id=None,
    )  # fmt: skip
    if name == "llama-tied":
        config = LlamaConfig(vocab_size=300, num_key_value_heads=2, tie_word_embeddings=True, **common)
        return LlamaForCausalLM(config)
    config = Qwen3Config(
        vocab_size=301, num_key_value_heads=1, attention_bias=True, tie_word_embeddings=False, **common
    )
    return Qwen3ForCausalLM(config)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """name -> (save_pretrained folder, the HF model); norms and biases away from their 1 and 0 starts."""
    saved = {}
    for name in MODELS[1:]:
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(11)
            hf_model = _hf_model(name).eval()
            for param_name, param in hf_model.named_parameters():
                if "norm" in param_name:
                    param.uniform_(0.5, 1.5)
                elif param_name.endswith("bias"):
                    param.normal_(0.0, 0.1)
        folder = tmp_path_factory.mktemp("ckpt") / name
        hf_model.save_pretrained(folder)
        saved[name] = (folder, hf_model)
    return saved


@pytest.fixture(scope="module")
def single(checkpoints: dict[str, tuple[Path, torch.nn.Module]]) -> dict[str, GreedyRun]:
    group = ParallelGroup.single()
    runs = {"tiny": greedy(tiny_model(group))}
    return runs | {name: greedy(checkpoint_model(group, folder)) for name, (folder, _) in checkpoints.items()}


@pytest.fixture(scope="module")
def ranks(
    checkpoints: dict[str, tuple[Path, torch.nn.Module]], tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, GreedyRun]]:
    """Each rank's runs, from one spawn of WORLD_SIZE gloo processes."""
    out = tmp_path_factory.mktemp("ranks")
    folders = [folder for folder, _ in checkpoints.values()]
    run_ranks(run_all, (out, folders), WORLD_SIZE, out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


def test_one_rank_matches_transformers_on_the_checkpoints(checkpoints, single):
    """Anchors the comparison: the unsplit model is HF's on these checkpoints (prefill's last rows)."""
    for name, (_, hf_model) in checkpoints.items():
        vocab = hf_model.config.vocab_size
        prompt = torch.randint(0, vocab, (7,), generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            expected = hf_model(prompt[None]).logits[0, -1]
        assert (single[name].logits[0, 0] - expected).abs().max().item() <= ATOL, name


@pytest.mark.parametrize("name", MODELS)
def test_two_ranks_give_the_logits_of_one(name, single, ranks):
    for rank, runs in enumerate(ranks):
        got, expected = runs[name].logits, single[name].logits
        assert got.shape == expected.shape, (name, rank)
        assert (got - expected).abs().max().item() <= ATOL, (name, rank)


@pytest.mark.parametrize("name", MODELS)
def test_two_ranks_give_the_greedy_tokens_of_one(name, single, ranks):
    for runs in ranks:
        assert torch.equal(runs[name].tokens, single[name].tokens)


@pytest.mark.parametrize("name", MODELS)
def test_each_rank_holds_its_slice_of_the_full_weights(name, single, ranks):
    """Concatenating the ranks' shards rebuilds the unsplit weights (deterministic random init and
    slicing at load time alike); norms are whole on every rank; o_proj's bias lives on rank 0 only."""
    full = single[name].weights
    shards = [runs[name].weights for runs in ranks]
    vocab = full["embed_tokens.weight"].shape[0]
    assert torch.equal(
        torch.cat([s["embed_tokens.weight"] for s in shards])[:vocab], full["embed_tokens.weight"]
    )
    for layer in range(2):
        prefix = f"layers.{layer}."
        down = torch.cat([s[prefix + "mlp.down_proj.weight"] for s in shards], dim=1)
        assert torch.equal(down, full[prefix + "mlp.down_proj.weight"])
        gate_up = [s[prefix + "mlp.gate_up_proj.weight"].chunk(2) for s in shards]
        expected_gate, expected_up = full[prefix + "mlp.gate_up_proj.weight"].chunk(2)
        assert torch.equal(torch.cat([g for g, _ in gate_up]), expected_gate)
        assert torch.equal(torch.cat([u for _, u in gate_up]), expected_up)
        assert all(
            torch.equal(s[prefix + "input_layernorm.weight"], full[prefix + "input_layernorm.weight"])
            for s in shards
        )
        bias = prefix + "self_attn.o_proj.bias"
        assert [bias in s for s in shards] == [bias in full] + [False] * (WORLD_SIZE - 1)
