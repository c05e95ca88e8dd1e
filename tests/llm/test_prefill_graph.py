"""Fresh-prefill graphs (through the simulator): same tokens as eager prefill, chunks and mixes included."""

import pytest
from engine_runs import run_all

from graphrun.errors import ConfigError
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.prefill_graph import prefill_ladder
from graphrun.llm.sampling_params import SamplingParams


def engine(**kw):
    kw.setdefault("max_num_seqs", 4)
    kw.setdefault("max_model_len", 96)
    kw.setdefault("mixed_prefill_tokens", 0)  # every prompt prefills in a prefill step (see test_mixed.py)
    return LLMEngine(EngineConfig(model="tiny", **kw))


def test_the_default_ladder_tops_out_at_the_limit():
    assert prefill_ladder(2048)[:4] == (16, 32, 48, 64) and prefill_ladder(2048)[-1] == 2048
    assert prefill_ladder(100) == (16, 32, 48, 64, 96, 100)
    assert prefill_ladder(8) == (8,)
    assert prefill_ladder(0) == ()


@pytest.fixture(scope="module")
def pair():
    # mode full: every fresh prompt replays a FULL prefill graph (full_and_piecewise sends a step of
    # several prompts to the piecewise graphs, tested in test_piecewise_graph.py)
    graph = engine(
        graph_backend="sim", cuda_graph_sizes=(1, 2, 4), max_num_batched_tokens=32, cuda_graph_mode="full"
    )
    eager = engine(enforce_eager=True, max_num_batched_tokens=32)
    return graph, eager


def test_every_prefill_rung_captures_and_prompts_replay_them(pair):
    graph, eager = pair
    runner = graph.prefill_graphs.runner
    assert [s.size for s in runner.status() if s.captured] == [16, 32]
    assert graph.describe()["prefill_capture_sizes"] == [16, 32]
    assert eager.prefill_graphs is None
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    prompts = ["short", "a prompt of about thirty bytes", "x"]
    before = runner.stats.num_replayed
    assert run_all(graph, prompts, params) == run_all(eager, prompts, params)
    assert runner.stats.num_replayed >= before + 3 and runner.stats.eager_fallback == {}


def test_sampled_prefill_tokens_match_eager(pair):
    graph, eager = pair
    params = SamplingParams(temperature=1.0, top_p=0.8, top_k=30, seed=7, max_tokens=5, ignore_eos=True)
    assert run_all(graph, ["sampled prompt"], params) == run_all(eager, ["sampled prompt"], params)


def test_long_prompts_chunk_first_chunk_in_a_graph_rest_eager(pair):
    graph, eager = pair
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    long_prompt = "a long prompt that spans more than one chunk of thirty-two tokens, twice over."
    before = graph.prefill_graphs.runner.stats.num_replayed
    prompts = [long_prompt, "and a short one", long_prompt[::-1]]  # mixes fresh rows and continuations
    assert run_all(graph, prompts, params) == run_all(eager, prompts, params)
    assert graph.prefill_graphs.runner.stats.num_replayed > before


def test_prefill_graphs_can_be_turned_off():
    eng = engine(graph_backend="sim", cuda_graph_sizes=(1, 2), cuda_graph_max_prefill_tokens=0)
    assert eng.prefill_graphs is None and eng.decode_graphs is not None
    with pytest.raises(ConfigError, match="cuda_graph_max_prefill_tokens"):
        EngineConfig(cuda_graph_max_prefill_tokens=-1)
