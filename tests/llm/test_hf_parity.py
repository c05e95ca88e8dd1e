"""graphrun's decoder must give transformers' logits and greedy tokens on the same checkpoint.

Small random HF models (Llama with llama3 rope scaling and a tied head, Qwen3 with q/k norms) are saved
with save_pretrained, loaded by graphrun, and run through a paged KV cache whose blocks are shuffled,
so block tables and slot mapping are exercised, not just contiguous memory.
"""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.weights import build_model, load_weights, read_model_config

BLOCK_SIZE = 4
NUM_BLOCKS = 32
BLOCKS_PER_SEQ = 12  # 48 slots: a 12-token prompt plus 32 new tokens fit
VOCAB = 300
ATOL = 1e-4


def _hf_config(family: str, attention_bias: bool):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        attention_bias=attention_bias,
        initializer_range=0.1,  # larger than the default: clearer argmax margins for the greedy test
        bos_token_id=None,
        eos_token_id=None,  # generate must not stop early
        pad_token_id=None,
    )
    if family == "llama":
        scaling = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,  # small, so prompt lengths reach every band
        }
        return LlamaConfig(rope_theta=500000.0, rope_scaling=scaling, tie_word_embeddings=True, **common)
    return Qwen3Config(rope_theta=1_000_000.0, tie_word_embeddings=False, **common)


@pytest.fixture(
    scope="module",
    params=[("llama", False), ("qwen3", False), ("qwen3", True)],
    ids=["llama", "qwen3", "qwen3-bias"],
)
def models(request, tmp_path_factory):
    """(HF model, graphrun model) with the same weights, via a save_pretrained folder."""
    family, bias = request.param
    hf_cls = LlamaForCausalLM if family == "llama" else Qwen3ForCausalLM
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1234)
        hf_model = hf_cls(_hf_config(family, bias)).eval()
        for name, param in hf_model.named_parameters():  # HF starts these at 1 and 0: make them matter
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.1)
    folder = tmp_path_factory.mktemp(f"{family}-ckpt")
    hf_model.save_pretrained(folder)
    model = build_model(read_model_config(folder), torch.float32, "cpu")
    load_weights(model, folder)
    return hf_model, model


def _kv_caches(model):
    config = model.config
    shape = (NUM_BLOCKS, BLOCK_SIZE, config.num_kv_heads, config.head_dim)
    return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(config.num_layers)]


def _block_tables(num_seqs: int) -> list[list[int]]:
    """Disjoint, shuffled blocks per sequence."""
    perm = torch.randperm(NUM_BLOCKS, generator=torch.Generator().manual_seed(0)).tolist()
    return [perm[i * BLOCKS_PER_SEQ : (i + 1) * BLOCKS_PER_SEQ] for i in range(num_seqs)]


def _meta(tables, starts, ends, decode: bool) -> AttentionMetadata:
    """Sequence i writes positions starts[i]..ends[i]-1 and then holds ends[i] tokens."""
    slots = [
        t[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE
        for t, s, e in zip(tables, starts, ends, strict=True)
        for p in range(s, e)
    ]
    common = dict(
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        block_tables=torch.tensor(tables, dtype=torch.int32),
        context_lens=torch.tensor(ends, dtype=torch.int32),
    )
    if decode:
        return AttentionMetadata(**common)
    query_start = [0]
    for s, e in zip(starts, ends, strict=True):
        query_start.append(query_start[-1] + e - s)
    return AttentionMetadata(
        **common,
        query_start=torch.tensor(query_start, dtype=torch.int32),
        query_start_host=query_start,
        context_lens_host=list(ends),
    )


def _prompt(length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed))


def _chunked_logits(model, prompt, cuts):
    """Prefill prompt in chunks ending at each of cuts; logits of every position."""
    caches, tables, logits, start = _kv_caches(model), _block_tables(1), [], 0
    for end in cuts:
        meta = _meta(tables, [start], [end], decode=False)
        hidden = model(prompt[start:end], torch.arange(start, end), meta, caches)
        logits.append(model.compute_logits(hidden))
        start = end
    return torch.cat(logits)


def _greedy(model, prompts, max_new_tokens):
    """Prefill all prompts as one batch, then decode one token per sequence per step."""
    caches, tables = _kv_caches(model), _block_tables(len(prompts))
    lens = [len(p) for p in prompts]
    meta = _meta(tables, [0] * len(prompts), lens, decode=False)
    positions = torch.cat([torch.arange(n) for n in lens])
    hidden = model(torch.cat(prompts), positions, meta, caches)
    last_rows = torch.tensor(lens).cumsum(0) - 1
    next_ids = model.compute_logits(hidden[last_rows]).argmax(-1)
    generated = [next_ids]
    for _ in range(max_new_tokens - 1):
        meta = _meta(tables, lens, [n + 1 for n in lens], decode=True)
        hidden = model(next_ids, torch.tensor(lens), meta, caches)
        next_ids = model.compute_logits(hidden).argmax(-1)
        generated.append(next_ids)
        lens = [n + 1 for n in lens]
    return torch.stack(generated, dim=1)  # (num_seqs, max_new_tokens)


@torch.no_grad()
def test_prefill_logits_match_transformers(models):
    hf_model, model = models
    prompt = _prompt(12, seed=1)
    expected = hf_model(prompt[None]).logits[0]
    got = _chunked_logits(model, prompt, cuts=[12])
    assert got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= ATOL


@torch.no_grad()
def test_chunked_prefill_gives_the_same_logits(models):
    hf_model, model = models
    prompt = _prompt(12, seed=2)
    expected = hf_model(prompt[None]).logits[0]
    got = _chunked_logits(model, prompt, cuts=[5, 12])  # second chunk starts mid-block
    assert (got - expected).abs().max().item() <= ATOL


@torch.no_grad()
def test_greedy_decode_matches_transformers_generate(models):
    hf_model, model = models
    prompt = _prompt(12, seed=3)
    expected = hf_model.generate(prompt[None], do_sample=False, max_new_tokens=32)[0, 12:]
    assert torch.equal(_greedy(model, [prompt], 32)[0], expected)


@torch.no_grad()
def test_batched_decode_matches_transformers_per_prompt(models):
    hf_model, model = models
    prompts = [_prompt(12, seed=4), _prompt(7, seed=5)]
    got = _greedy(model, prompts, 16)
    for row, prompt in zip(got, prompts, strict=True):
        expected = hf_model.generate(prompt[None], do_sample=False, max_new_tokens=16)[0, len(prompt) :]
        assert torch.equal(row, expected)


@torch.no_grad()
def test_bfloat16_is_as_accurate_as_transformers_bfloat16(models):
    """Fused projections round differently, so bf16 logits differ from HF's bf16 ones by a few ulps; the
    bound: our error against fp32 stays within that of transformers' own bf16 run."""
    hf_model, model = models
    prompt = _prompt(12, seed=6)
    reference = hf_model(prompt[None]).logits[0]
    hf_error = (
        (copy.deepcopy(hf_model).to(torch.bfloat16)(prompt[None]).logits[0].float() - reference).abs().max()
    )
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    bf16_model.rotary.reset_cache()  # .to(bfloat16) cast the rope table too
    caches = [(k.bfloat16(), v.bfloat16()) for k, v in _kv_caches(model)]
    meta = _meta(_block_tables(1), [0], [12], decode=False)
    got = bf16_model.compute_logits(bf16_model(prompt, torch.arange(12), meta, caches))
    assert (got - reference).abs().max() <= 1.5 * hf_error
