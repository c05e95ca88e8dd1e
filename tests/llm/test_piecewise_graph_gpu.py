"""The cuda graph modes on a real GPU: greedy tokens of every mode equal eager's (needs CUDA).

The tiny preset in float32 (bf16 with random weights leaves near-ties that padding may flip), CUDA graphs
and the Triton attention kernels where available. One workload covers the step kinds: a first prefill step
of several prompts, a 300-token prompt split into a fresh chunk and a continuation, and mixed steps of up
to 8 decode rows + 48 prompt tokens (above the top decode rung, 8).
"""

import pytest
import torch
from engine_runs import run_all

from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu

# gpu_memory_utilization caps the whole process: each engine built later needs a higher cap
UTILIZATION = {"none": 0.15, "full": 0.3, "piecewise": 0.45, "full_and_piecewise": 0.6}


def engine(mode: str) -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            model="tiny",
            device="cuda",
            dtype="float32",
            max_num_seqs=8,
            max_model_len=352,
            max_num_batched_tokens=256,  # a 300-token prompt prefills as a fresh chunk + a continuation
            gpu_memory_utilization=UTILIZATION[mode],
            mixed_prefill_tokens=48,
            cuda_graph_mode=mode,
        )
    )


def greedy_tokens(eng: LLMEngine, prompts: list[list[int]]) -> list[list[int]]:
    return run_all(eng, prompts, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True))


PROMPTS = [[(11 * i + j) % 200 + 3 for j in range(n)] for i, n in enumerate((7, 300, 45, 130, 3, 64, 19, 90))]


@pytest.fixture(scope="module")
def engines():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return {mode: engine(mode) for mode in UTILIZATION}  # in order of rising caps


@pytest.mark.parametrize("mode", ["full", "piecewise", "full_and_piecewise"])
def test_every_mode_gives_eager_greedy_tokens_on_the_gpu(engines, mode):
    eager = greedy_tokens(engines["none"], PROMPTS)
    eng = engines[mode]
    assert greedy_tokens(eng, PROMPTS) == eager
    if mode != "full":
        runner = eng.piecewise_graphs.runner
        assert all(st.captured for st in runner.status())
        assert runner.stats.num_replayed > 0
