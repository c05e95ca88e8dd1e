"""LLM.generate returns logprobs and prompt logprobs: transformers' log-softmax on the same checkpoint."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import LlamaConfig, LlamaForCausalLM

from graphrun import LLM
from graphrun.llm.sampling_params import SamplingParams

VOCAB = 96
ATOL = 1e-4
PROMPTS = ["w5 w17 w33 w8 w60", "w70 w4 w41"]
PARAMS = SamplingParams(temperature=0.8, seed=7, max_tokens=5, ignore_eos=True, logprobs=3, prompt_logprobs=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(folder, HF model): a random Llama saved with save_pretrained and a word tokenizer w0..w95."""
    folder = tmp_path_factory.mktemp("api-logprobs")
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        initializer_range=0.1, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer = Tokenizer(WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return folder, model


@pytest.fixture(scope="module", params=["sim", "eager"])
def llm(request, checkpoint):
    folder, _ = checkpoint
    options = {"graph_backend": "sim"} if request.param == "sim" else {"enforce_eager": True}
    return LLM(str(folder), max_model_len=64, max_num_seqs=4, device="cpu", **options)


def hf_logprobs(model: LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    """(len(ids), vocab): log-softmax of transformers' logits after each prefix of ids."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def check(lp, row: torch.Tensor, token: int, k: int) -> None:
    assert math.isclose(lp.logprob, row[token].item(), abs_tol=ATOL)
    values, ids = row.topk(k)
    assert torch.allclose(torch.tensor(lp.top_logprobs), values, atol=ATOL)
    assert list(lp.top_ids) == ids.tolist()


def test_logprobs_and_prompt_logprobs_equal_transformers_log_softmax(llm, checkpoint):
    _, model = checkpoint
    results = llm.generate(PROMPTS, PARAMS)
    for prompt, result in zip(PROMPTS, results, strict=True):
        prompt_ids = [int(word[1:]) for word in prompt.split()]
        ref = hf_logprobs(model, prompt_ids + result.token_ids)
        assert result.logprobs is not None and len(result.logprobs) == len(result.token_ids) == 5
        for j, (token, lp) in enumerate(zip(result.token_ids, result.logprobs, strict=True)):
            check(lp, ref[len(prompt_ids) - 1 + j], token, 3)
        assert result.prompt_logprobs is not None and len(result.prompt_logprobs) == len(prompt_ids) - 1
        for i, lp in enumerate(result.prompt_logprobs, start=1):  # token i, scored after tokens [0, i)
            check(lp, ref[i - 1], prompt_ids[i], 2)


def test_without_logprobs_asked_there_are_none(llm):
    (result,) = llm.generate(PROMPTS[0], replace(PARAMS, logprobs=None, prompt_logprobs=None))
    assert result.logprobs is None and result.prompt_logprobs is None and len(result.token_ids) == 5
    (only,) = llm.generate(PROMPTS[0], replace(PARAMS, prompt_logprobs=None, logprobs=0))
    assert only.prompt_logprobs is None and all(lp.top_ids == () for lp in only.logprobs)


def test_every_choice_carries_the_prompts_logprobs(llm, checkpoint):
    _, model = checkpoint
    results = llm.generate(PROMPTS, PARAMS, n=3)
    for i, prompt in enumerate(PROMPTS):
        prompt_ids = [int(word[1:]) for word in prompt.split()]
        choices = results[i * 3 : i * 3 + 3]
        first = choices[0].prompt_logprobs
        assert first is not None and len(first) == len(prompt_ids) - 1
        assert all(c.prompt_logprobs == first for c in choices)  # the forks share the first's
        for c in choices:  # each choice's own tokens, scored on its own context
            ref = hf_logprobs(model, prompt_ids + c.token_ids)
            for j, (token, lp) in enumerate(zip(c.token_ids, c.logprobs, strict=True)):
                check(lp, ref[len(prompt_ids) - 1 + j], token, 3)
