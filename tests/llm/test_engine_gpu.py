"""The engine on a real GPU: CUDA decode and prefill graphs with async scheduling vs eager (needs CUDA)."""

import pytest
import torch
from engine_runs import run_all, tiny_cuda_engine

from graphrun.llm.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engines():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    eager = tiny_cuda_engine(0.3, enforce_eager=True, async_scheduling=False)
    return tiny_cuda_engine(0.6), eager


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_cuda_graphs_with_async_scheduling_equal_eager(engines, batch):
    graph, eager = engines
    assert graph.decode_graphs is not None and graph.prefill_graphs is not None
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = ["p" * (5 + 17 * i) for i in range(batch)]  # 6 to 125 tokens: across the prefill rungs
    assert run_all(graph, prompts, params) == run_all(eager, prompts, params)


def test_mixed_steps_through_the_decode_graph_equal_eager(engines):
    graph, eager = engines
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    prompts = ["m" * (9 + 11 * i) for i in range(4)]

    def staggered(eng):
        out, kinds, ids = {}, [], []
        schedule = eng.scheduler.schedule

        def spy():
            batch = schedule()
            kinds.append(batch.kind if batch is not None else None)
            return batch

        eng.scheduler.schedule = spy
        try:
            for step in range(400):
                if step % 4 == 0 and len(ids) < len(prompts):
                    ids.append(eng.add_request(prompts[len(ids)], params))
                    out[ids[-1]] = []
                for o in eng.step():
                    out[o.seq_id].append(o.new_token_id)
                if len(ids) == len(prompts) and not eng.has_unfinished():
                    break
        finally:
            del eng.scheduler.schedule
        return [out[i] for i in ids], kinds

    before = graph.decode_graphs.runners["greedy"].stats.num_replayed
    got, kinds = staggered(graph)
    assert "mixed" in kinds
    assert got == staggered(eager)[0]
    runner = graph.decode_graphs.runners["greedy"]
    assert runner.stats.num_replayed > before and runner.stats.eager_fallback == {}


def test_every_graph_captured_and_replayed_without_fallback(engines):
    graph, _ = engines
    run_all(graph, ["warm"], SamplingParams(temperature=0.7, seed=3, max_tokens=8, ignore_eos=True))
    runners = [*graph.decode_graphs.runners.values(), graph.prefill_graphs.runner]
    for runner in runners:
        assert all(s.captured for s in runner.status()), runner.name
        # row-independent steps: the padded check must not disable padding (integer tokens, bf16 kernels)
        assert all(s.padded for s in runner.status()), str(runner.status())
    assert graph.prefill_graphs.runner.stats.num_replayed > 0
    assert graph.decode_graphs.runners["greedy"].stats.eager_fallback == {}
