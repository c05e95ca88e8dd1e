"""The engine end to end on the tiny preset: graph decode (through the simulator) equals eager decode."""

import time

import pytest
import torch
from engine_runs import run_all

from graphrun.llm.api import LLM
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.scheduler import RequestRejected

LADDER = (1, 2, 4, 8)


def engine(**kw):
    kw.setdefault("max_num_seqs", 8)
    kw.setdefault("max_model_len", 96)
    return LLMEngine(EngineConfig(model="tiny", **kw))


@pytest.fixture(scope="module")
def engines():
    graph = engine(graph_backend="sim", cuda_graph_sizes=LADDER)
    eager = engine(enforce_eager=True)
    return graph, eager


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 7, 8])
def test_graph_and_eager_greedy_tokens_are_identical_for_every_rung(engines, batch):
    graph, eager = engines
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    prompts = [f"prompt number {i} for batch {batch}" for i in range(batch)]
    before = graph.decode_graphs.runners["greedy"].stats.num_replayed
    assert run_all(graph, prompts, params) == run_all(eager, prompts, params)
    assert graph.decode_graphs.runners["greedy"].stats.num_replayed > before  # the graphs really ran
    assert graph.decode_graphs.runners["greedy"].stats.eager_fallback == {}


def test_every_decode_rung_was_captured(engines):
    graph, _ = engines
    for runner in graph.decode_graphs.runners.values():
        assert [s.size for s in runner.status() if s.captured] == list(LADDER)


def test_padded_verification_keeps_padding_for_decode_and_prefill(engines):
    graph, _ = engines
    runners = [*graph.decode_graphs.runners.values(), graph.prefill_graphs.runner]
    for runner in runners:  # their steps are row-independent: the padded check must not disable padding
        assert all(s.captured and s.padded for s in runner.status()), str(runner.status())
        assert runner.stats.capture_failed == {}


def test_engine_status_prints_as_tables(engines):
    graph, eager = engines
    text = str(graph.status())
    assert "model     tiny" in text and "KV cache" in text
    for name in ("decode-sampling", "decode-greedy", "decode-logprobs", "prefill"):
        assert f"runner {name} (sim): " in text
    # the default mode, full_and_piecewise, captures the piecewise runner too; the structured decode
    # kinds only come with a structured step (test_structured_lazy.py), and this module runs none
    runners = ["decode-sampling", "decode-greedy", "decode-logprobs", "prefill", "piecewise"]
    assert [r.runner for r in graph.status().runners] == runners
    assert "RungStatus(" not in text and "size  graph" in text
    off = eager.status()
    assert off.runners == () and "graphs    off (--enforce-eager)" in str(off)


def test_seeded_sampling_is_reproducible_and_equal_in_graph_and_eager(engines):
    graph, eager = engines
    params = [
        SamplingParams(temperature=0.9, top_p=0.9, top_k=40, seed=s, max_tokens=8, ignore_eos=True)
        for s in (1, 2, 3)
    ]
    prompts = ["a", "b", "c"]
    first = run_all(graph, prompts, params)
    assert first == run_all(graph, prompts, params)
    assert first == run_all(eager, prompts, params)
    assert graph.decode_graphs.runners["sampling"].stats.num_replayed > 0


def test_preemption_under_a_small_cache_loses_nothing():
    eng = engine(cpu_kv_cache_bytes=40 * 1024, max_model_len=64, graph_backend="sim", cuda_graph_sizes=LADDER)
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    outs = run_all(eng, [f"request {i} " * 3 for i in range(8)], params)
    assert all(len(o) == 20 for o in outs)
    assert eng.scheduler.num_preemptions > 0
    assert eng.scheduler.block_manager.num_used_blocks == 0
    alone = run_all(engine(enforce_eager=True, max_model_len=64), ["request 5 " * 3], params)
    assert outs[5] == alone[0]  # recompute after preemption gives the same greedy tokens


def test_abort_frees_blocks_at_once(engines):
    graph, _ = engines
    seq_id = graph.add_request("to be aborted", SamplingParams(max_tokens=50, ignore_eos=True))
    graph.step()
    assert graph.scheduler.block_manager.num_used_blocks > 0
    graph.abort(seq_id)
    assert graph.scheduler.block_manager.num_used_blocks == 0
    assert not graph.has_unfinished()


def test_requests_that_can_never_run_are_rejected(engines):
    graph, _ = engines
    with pytest.raises(RequestRejected, match="max_model_len"):
        graph.add_request("x" * 90, SamplingParams(max_tokens=20))
    with pytest.raises(RequestRejected):
        graph.add_request("", SamplingParams(max_tokens=2))


def test_llm_generate_returns_text_in_prompt_order():
    llm = LLM("tiny", max_num_seqs=4, max_model_len=64)
    outs = llm.generate(
        ["first", "second", "third"], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    )
    assert [o.prompt for o in outs] == ["first", "second", "third"]
    assert all(
        len(o.token_ids) == 5 and isinstance(o.text, str) and o.finish_reason == "length" for o in outs
    )
    assert llm.last_stats is not None and llm.last_stats.num_output_tokens == 15


def test_engine_config_validation():
    from graphrun.errors import ConfigError

    with pytest.raises(ConfigError, match="graph_backend"):
        EngineConfig(graph_backend="tpu")
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        EngineConfig(gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="cuda_graph_max_bs"):
        EngineConfig(cuda_graph_max_bs=-1)


def test_verification_inputs_never_read_the_scratch_block_they_write():
    """Every verification row writes its K/V into block 0, rows sharing a slot race; tables avoid it."""
    from graphrun.llm.block_manager import SCRATCH_BLOCK
    from graphrun.llm.decode_graph import DecodeShape, random_inputs

    shape = DecodeShape(8, 6, 96, 5, 16, 100)
    step = random_inputs(shape, 64, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert int(step.block_tables.min()) >= 1 and SCRATCH_BLOCK == 0
    assert int(step.slots.max()) < shape.block_size  # slots: block 0 only


def test_on_launched_runs_once_per_step_after_the_launch_and_before_the_tokens_are_read(engines):
    graph, _ = engines
    graph.add_request("on launched", SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))
    calls: list[float] = []
    steps = returned = 0
    while graph.has_unfinished():
        returned += len(graph.step(on_launched=lambda: calls.append(time.perf_counter())))
        steps += 1
        timing = graph.last_step_timing
        assert len(calls) == steps and timing is not None
        assert timing.start <= timing.launched <= calls[-1] <= timing.waited <= timing.end
    assert returned == 5
