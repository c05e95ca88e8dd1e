"""What the engine tests share: running requests to the end, and the tiny CUDA engine of the GPU tests."""

from typing import Any

from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams


def tiny_cuda_engine(utilization: float, **overrides: Any) -> LLMEngine:
    """The tiny preset on CUDA in float32: 8 streams, 160 tokens, mixed steps of 4 prompt tokens (with <= 4
    streams a mixed step's rows fit the top rung, 8). gpu_memory_utilization caps the whole process, so an
    engine built while another lives needs a higher cap than the first."""
    settings: dict[str, Any] = {
        "model": "tiny", "device": "cuda", "dtype": "float32", "max_num_seqs": 8, "max_model_len": 160,
        "gpu_memory_utilization": utilization, "mixed_prefill_tokens": 4,
    }  # fmt: skip
    return LLMEngine(EngineConfig(**{**settings, **overrides}))


def run_all(eng: LLMEngine, prompts: list, params: SamplingParams) -> list[list[int]]:
    """Submit every prompt with `params`, step until none is unfinished; each request's tokens, in order."""
    ids = [eng.add_request(p, params) for p in prompts]
    out: dict[int, list[int]] = {i: [] for i in ids}
    while eng.has_unfinished():
        for o in eng.step():
            out[o.seq_id].append(o.new_token_id)
    return [out[i] for i in ids]
