"""Sampled-token logprobs: the model's log-softmax, top alternatives sorted, graph (sim) == eager."""

import math

import pytest
import torch
from engine_runs import run_outputs

from graphrun.graphs.status import CallFallback
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.logprobs import MAX_LOGPROBS, compute_logprobs
from graphrun.llm.sampling_params import SamplingParams, SamplingParamsError

BLOCK = 16
ATOL = 1e-4


def engine(**kw):
    kw.setdefault("max_num_seqs", 4)
    kw.setdefault("max_model_len", 96)
    return LLMEngine(EngineConfig(model="tiny", **kw))


@pytest.fixture(scope="module")
def engines():
    return engine(graph_backend="sim", cuda_graph_sizes=(1, 2, 4)), engine(enforce_eager=True)


def reference_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log_softmax of the eager model's logits at every position of ids, one fresh prefill: (len, vocab)."""
    cfg = model.config
    num_blocks = len(ids) // BLOCK + 2
    shape = (num_blocks, BLOCK, cfg.num_kv_heads, cfg.head_dim)
    caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(cfg.num_layers)]
    n = len(ids)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(BLOCK, BLOCK + n),  # blocks 1.. (block 0 unused)
        block_tables=torch.arange(1, num_blocks, dtype=torch.int32)[None, :],
        context_lens=torch.tensor([n], dtype=torch.int32),
        query_start=torch.tensor([0, n], dtype=torch.int32),
        query_start_host=[0, n],
        context_lens_host=[n],
    )
    with torch.inference_mode():
        hidden = model(torch.tensor(ids), torch.arange(n), meta, caches)
        return torch.log_softmax(model.compute_logits(hidden).float(), dim=-1)


def check_against_reference(eng, prompt: str, outs, k: int) -> None:
    prompt_ids = eng.tokenizer.encode(prompt)
    tokens = [o.new_token_id for o in outs]
    ref = reference_logprobs(eng.model, prompt_ids + tokens[:-1])
    for j, out in enumerate(outs):
        row = ref[len(prompt_ids) - 1 + j]
        lp = out.logprobs
        assert lp is not None and len(lp.top_ids) == k and len(lp.top_logprobs) == k
        assert math.isclose(lp.logprob, row[out.new_token_id].item(), abs_tol=ATOL)
        assert list(lp.top_logprobs) == sorted(lp.top_logprobs, reverse=True)
        want_values, want_ids = row.topk(k)
        assert torch.allclose(torch.tensor(lp.top_logprobs), want_values, atol=ATOL)
        assert set(lp.top_ids) == set(want_ids.tolist()) or k == 0


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_logprobs_equal_the_models_log_softmax_graph_and_eager(engines, temperature):
    graph, eager = engines
    prompts = ["logprobs of a prompt", "another one, longer than the first prompt"]
    params = SamplingParams(temperature=temperature, max_tokens=6, ignore_eos=True, seed=3, logprobs=5)
    for eng in engines:
        for prompt, outs in zip(prompts, run_outputs(eng, prompts, params), strict=True):
            check_against_reference(eng, prompt, outs, 5)
    before = graph.decode_graphs.runners["logprobs"].stats.num_replayed
    g, e = run_outputs(graph, prompts, params), run_outputs(eager, prompts, params)
    assert graph.decode_graphs.runners["logprobs"].stats.num_replayed > before  # the graph really ran
    assert [[o.new_token_id for o in x] for x in g] == [[o.new_token_id for o in x] for x in e]
    for xs, ys in zip(g, e, strict=True):
        for x, y in zip(xs, ys, strict=True):
            assert x.logprobs.top_ids == y.logprobs.top_ids
            assert math.isclose(x.logprobs.logprob, y.logprobs.logprob, abs_tol=ATOL)


def test_greedy_tokens_logprob_is_the_top_alternative(engines):
    graph, _ = engines
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, logprobs=MAX_LOGPROBS)
    (outs,) = run_outputs(graph, ["greedy top"], params)
    for out in outs:
        assert out.logprobs.top_ids[0] == out.new_token_id
        assert math.isclose(out.logprobs.top_logprobs[0], out.logprobs.logprob, abs_tol=1e-6)
        assert len(out.logprobs.top_ids) == MAX_LOGPROBS


def test_only_rows_that_ask_get_logprobs_and_the_plain_graphs_stay_in_use(engines):
    graph, _ = engines
    sampling = graph.decode_graphs.runners["sampling"].stats.num_replayed
    logprobs = graph.decode_graphs.runners["logprobs"].stats.num_replayed
    plain = SamplingParams(temperature=0.7, max_tokens=4, ignore_eos=True)
    (outs,) = run_outputs(graph, ["no logprobs here"], plain)
    assert all(o.logprobs is None for o in outs)
    assert graph.decode_graphs.runners["sampling"].stats.num_replayed > sampling
    assert graph.decode_graphs.runners["logprobs"].stats.num_replayed == logprobs
    asks = SamplingParams(temperature=0.7, max_tokens=4, ignore_eos=True, logprobs=0)
    mixed = run_outputs(graph, ["one asks", "one does not"], [asks, plain])
    assert all(o.logprobs is not None and o.logprobs.top_ids == () for o in mixed[0])
    assert all(o.logprobs is None for o in mixed[1])


def test_piecewise_mode_reports_the_same_logprobs():
    eng = engine(graph_backend="sim", cuda_graph_mode="piecewise", max_num_batched_tokens=64,
                 cuda_graph_max_prefill_tokens=64)  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, logprobs=3)
    (outs,) = run_outputs(eng, ["piecewise logprobs"], params)
    check_against_reference(eng, "piecewise logprobs", outs, 3)


def test_full_mode_prefill_runs_eager_counted_and_mixed_steps_gather_logprobs():
    eng = engine(
        graph_backend="sim", cuda_graph_mode="full", cuda_graph_sizes=(1, 2, 4, 8), mixed_prefill_tokens=8
    )
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=2)
    first = eng.add_request("the first request decodes", params)
    outs: dict[int, list] = {first: []}
    for _ in range(3):
        for o in eng.step():
            outs[o.seq_id].append(o)
    second = eng.add_request("a second prompt arrives while the first decodes", params)
    outs[second] = []
    kinds = set()
    while eng.has_unfinished():
        for o in eng.step():
            outs[o.seq_id].append(o)
        kinds.add(eng.last_step_timing.kind)
    assert "mixed" in kinds  # the second prompt's chunk rode with the first's decode (the decode graph)
    check_against_reference(eng, "the first request decodes", outs[first], 2)
    check_against_reference(eng, "a second prompt arrives while the first decodes", outs[second], 2)
    fallbacks = eng.prefill_graphs.runner.stats.eager_fallback
    assert fallbacks[CallFallback.NEEDS_OTHER_OUTPUT] == 1  # the first prompt, alone: no prefill graph
    assert eng.decode_graphs.runners["logprobs"].stats.num_replayed > 0


@pytest.mark.parametrize("mode", ["full", "piecewise", "full_and_piecewise", "eager"])
def test_prompt_logprobs_are_the_models_for_every_prompt_token_but_the_first(mode):
    kw = {"enforce_eager": True} if mode == "eager" else {"graph_backend": "sim", "cuda_graph_mode": mode}
    # chunks of 16 tokens: a 40-token prompt is prefilled in three, and the logprobs continue across them
    eng = engine(
        max_num_batched_tokens=16, cuda_graph_max_prefill_tokens=16, enable_prefix_caching=True, **kw
    )
    prompt = "a prompt long enough to be prefilled in chunks!"
    ids = eng.tokenizer.encode(prompt)
    params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True, prompt_logprobs=3)
    for _ in range(2):  # the second time, the prefix cache holds the prompt: it must not skip it
        (outs,) = run_outputs(eng, [prompt], params)
        got = outs[0].prompt_logprobs
        assert got is not None and len(got) == len(ids) - 1 and outs[1].prompt_logprobs is None
        ref = reference_logprobs(eng.model, ids)
        for p, lp in enumerate(got):
            assert math.isclose(lp.logprob, ref[p, ids[p + 1]].item(), abs_tol=ATOL)
            assert torch.allclose(torch.tensor(lp.top_logprobs), ref[p].topk(3).values, atol=ATOL)
        assert outs[0].logprobs is None  # sampled-token logprobs were not asked for


def test_compute_logprobs_takes_the_sampled_token_and_sorted_top_k():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]])
    values, ids = compute_logprobs(logits, torch.tensor([2]), 2)
    ref = torch.log_softmax(logits, dim=-1)[0]
    assert ids.tolist() == [[1, 2]]
    assert torch.allclose(values[0], torch.stack([ref[2], ref[1], ref[2]]))


@pytest.mark.parametrize("bad", [-1, 21, True, 1.5])
def test_logprobs_out_of_range_is_rejected_naming_it(bad):
    with pytest.raises(SamplingParamsError) as info:
        SamplingParams(logprobs=bad)
    assert info.value.param == "logprobs"
