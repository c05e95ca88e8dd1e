"""--compile in the engine: the decode graphs record inductor's code (CPU inductor, simulator) and greedy
tokens stay those of eager decode."""

from engine_runs import run_all

from graphrun.graphs.status import CompileOutcome
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams


def test_compiled_decode_graphs_give_eager_greedy_tokens():
    common = {"model": "tiny", "max_num_seqs": 2, "max_model_len": 48, "cuda_graph_max_prefill_tokens": 0}
    compiled = LLMEngine(EngineConfig(graph_backend="sim", cuda_graph_sizes=(1, 2), compile=True, **common))
    eager = LLMEngine(EngineConfig(enforce_eager=True, **common))
    greedy = compiled.decode_graphs.runners["greedy"]
    report = greedy.status().compile
    assert report is not None and report.outcome is CompileOutcome.COMPILED, report
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    prompts = ["compiled decode", "and a second prompt"]
    before = greedy.stats.num_replayed
    assert run_all(compiled, prompts, params) == run_all(eager, prompts, params)
    assert greedy.stats.num_replayed > before
