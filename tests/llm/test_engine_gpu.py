"""The engine on a real GPU: CUDA decode and prefill graphs with async scheduling vs eager (needs CUDA)."""

import pytest
import torch

from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu


def engine(utilization, **kw):
    """gpu_memory_utilization caps the whole process, so a second engine needs a higher cap than the first."""
    return LLMEngine(
        EngineConfig(
            model="tiny",
            device="cuda",
            dtype="float32",
            max_num_seqs=8,
            max_model_len=160,
            gpu_memory_utilization=utilization,
            **kw,
        )
    )


def run_all(eng, prompts, params):
    ids = [eng.add_request(p, params) for p in prompts]
    out = {i: [] for i in ids}
    while eng.has_unfinished():
        for o in eng.step():
            out[o.seq_id].append(o.new_token_id)
    return [out[i] for i in ids]


@pytest.fixture(scope="module")
def engines():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    eager = engine(0.3, enforce_eager=True, async_scheduling=False)
    return engine(0.6), eager


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_cuda_graphs_with_async_scheduling_equal_eager(engines, batch):
    graph, eager = engines
    assert graph.decode_graphs is not None and graph.prefill_graphs is not None
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = ["p" * (5 + 17 * i) for i in range(batch)]  # 6 to 125 tokens: across the prefill rungs
    assert run_all(graph, prompts, params) == run_all(eager, prompts, params)


def test_every_graph_captured_and_replayed_without_fallback(engines):
    graph, _ = engines
    run_all(graph, ["warm"], SamplingParams(temperature=0.7, seed=3, max_tokens=8, ignore_eos=True))
    runners = [*graph.decode_graphs.runners.values(), graph.prefill_graphs.runner]
    for runner in runners:
        assert all(s.captured for s in runner.status()), runner.name
    assert graph.prefill_graphs.runner.stats.num_replayed > 0
    assert graph.decode_graphs.runners["greedy"].stats.eager_fallback == {}
