"""n choices of one prompt: one prefill, forks that share the prompt's blocks, the tokens of separate
requests seeded seed + j (the engine on the tiny preset; graphs through the simulator)."""

from dataclasses import replace

import pytest

from graphrun.llm.api import LLM
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.scheduler import RequestRejected

LADDER = (1, 2, 4, 8)
PROMPT = list(range(3, 40))  # 37 tokens: the fork shares 2 blocks of 16 and copies the third
SEEDED = SamplingParams(temperature=1.0, seed=7, max_tokens=10, ignore_eos=True)


def engine(**kw):
    kw.setdefault("max_num_seqs", 8)
    kw.setdefault("max_model_len", 96)
    return LLMEngine(EngineConfig(model="tiny", **kw))


@pytest.fixture(scope="module")
def engines():
    return engine(graph_backend="sim", cuda_graph_sizes=LADDER), engine(enforce_eager=True)


def run(eng, groups):
    out = {seq_id: [] for group in groups for seq_id in group}
    while eng.has_unfinished():
        for o in eng.step():
            out[o.seq_id].append(o.new_token_id)
    return [[out[seq_id] for seq_id in group] for group in groups]


@pytest.mark.parametrize("prompt_len", [37, 33, 5])  # copy a partial block; fork on a boundary; one block
@pytest.mark.parametrize("which", [0, 1])  # graph (sim), eager
def test_choices_equal_separate_requests_seeded_seed_plus_j(engines, prompt_len, which):
    eng = engines[which]
    prompt = PROMPT[:prompt_len]
    (choices,) = run(eng, [eng.add_choices(prompt, SEEDED, 4)])
    separate = run(eng, [[eng.add_request(prompt, replace(SEEDED, seed=7 + j))] for j in range(4)])
    assert choices == [tokens for (tokens,) in separate]
    assert len({tuple(c) for c in choices}) == 4  # the seeds differ, so do the choices
    assert eng.scheduler.block_manager.num_used_blocks == 0


def test_seeded_choices_are_reproducible_and_greedy_ones_equal_one_request(engines):
    eng = engines[0]
    assert run(eng, [eng.add_choices(PROMPT, SEEDED, 3)]) == run(eng, [eng.add_choices(PROMPT, SEEDED, 3)])
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    (choices,) = run(eng, [eng.add_choices(PROMPT, greedy, 4)])
    ((alone,),) = run(eng, [[eng.add_request(PROMPT, greedy)]])
    assert choices == [alone] * 4


def test_n_choices_prefill_once_and_share_the_prompt_blocks(engines):
    eng = engines[0]
    prefills, forks = eng.num_prefills, eng.num_forks
    ids = eng.add_choices(PROMPT, SEEDED, 4)
    eng.step()  # the first choice's prompt, then the fork
    eng.step()
    bm = eng.scheduler.block_manager
    assert bm.num_shared_blocks == 2  # the prompt's two full blocks, held by all four choices
    assert bm.num_used_blocks == 2 + 4  # plus one block of its own per choice
    run(eng, [ids])
    assert (eng.num_prefills - prefills, eng.num_forks - forks) == (1, 3)
    assert bm.num_used_blocks == 0


def test_forked_choices_read_the_copied_block(monkeypatch):
    eng = engine(enforce_eager=True, enable_prefix_caching=False)  # the garbage below would be cached K/V
    (good,) = run(eng, [eng.add_choices(PROMPT, SEEDED, 2)])
    monkeypatch.setattr(eng, "_copy_blocks", lambda copies: None)
    for k_cache, v_cache in eng.kv_caches:  # what a skipped copy leaves in the choice's new block
        k_cache.fill_(50.0)  # large: the tiny random model shrugs off small changes
        v_cache.fill_(-50.0)
    (bad,) = run(eng, [eng.add_choices(PROMPT, SEEDED, 2)])
    assert bad[0] == good[0] and bad[1] != good[1]


def test_choices_survive_preemption_and_aborts():
    eng = engine(cpu_kv_cache_bytes=40 * 1024, max_model_len=64, graph_backend="sim", cuda_graph_sizes=LADDER)
    params = replace(SEEDED, max_tokens=20)
    groups = [eng.add_choices(PROMPT[:20], replace(params, seed=10 * i), 3) for i in range(3)]
    eng.abort(groups[2][0])  # the first choice, before it prefilled: the second prefills in its place
    eng.abort(groups[2][2])
    outs = run(eng, groups)
    assert eng.scheduler.num_preemptions > 0
    assert eng.scheduler.block_manager.num_used_blocks == 0
    alone = engine(enforce_eager=True, max_model_len=64)
    for i in range(2):
        expect = run(
            alone, [[alone.add_request(PROMPT[:20], replace(params, seed=10 * i + j))] for j in range(3)]
        )
        assert outs[i] == [tokens for (tokens,) in expect]
    assert outs[2][0] == outs[2][2] == [] and len(outs[2][1]) == 20


def test_a_group_waits_for_seats_for_all_its_choices():
    eng = engine(max_num_seqs=4, enforce_eager=True)
    eng.add_request(PROMPT, SEEDED)
    eng.add_choices(PROMPT, SEEDED, 4)  # needs 4 seats; 1 is taken
    eng.step()
    assert eng.scheduler.num_running == 1 and eng.scheduler.num_waiting == 1
    with pytest.raises(RequestRejected) as info:
        eng.add_choices(PROMPT, SEEDED, 5)
    assert info.value.param == "n" and "max_num_seqs=4" in str(info.value)
    run(eng, [[0, 1, 2, 3, 4]])
    assert eng.scheduler.block_manager.num_used_blocks == 0


def test_llm_generate_n_orders_results_prompt_major():
    llm = LLM("tiny", enforce_eager=True, max_model_len=64)
    results = llm.generate(["a b c", "d e f g"], SEEDED, n=2)
    assert [(r.prompt, r.index) for r in results] == [
        ("a b c", 0),
        ("a b c", 1),
        ("d e f g", 0),
        ("d e f g", 1),
    ]
    alone = llm.generate("d e f g", replace(SEEDED, seed=8))
    assert results[3].token_ids == alone[0].token_ids
