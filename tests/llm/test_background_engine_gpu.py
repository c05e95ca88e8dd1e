"""The engine's background capture on a real GPU: rungs captured between steps, on the engine thread,
change no greedy token (needs CUDA)."""

import pytest
from engine_runs import run_all

from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu


def test_an_engine_capturing_in_the_background_gives_the_tokens_it_gives_once_captured():
    eng = LLMEngine(
        EngineConfig(
            model="tiny",
            device="cuda",
            dtype="float32",
            max_num_seqs=8,
            max_model_len=160,
            gpu_memory_utilization=0.3,
            mixed_prefill_tokens=4,
            capture="background",
            cuda_graph_max_prefill_tokens=256,  # the whole default ladder is minutes of capture on a GPU
        )
    )
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = [f"prompt {i} about graphs" for i in range(5)]

    assert eng.capture_pending
    during = run_all(eng, prompts, params)
    while eng.capture_step():
        pass
    assert eng.graph_progress().startswith("captured") and not eng.capture_pending
    assert run_all(eng, prompts, params) == during
    assert eng.decode_graphs is not None and eng.decode_graphs.runners["greedy"].stats.num_replayed > 0
