"""What the engine tests share: running requests to the end, and the tiny CUDA engine of the GPU tests."""

from typing import Any

import pytest
import torch

from graphrun.llm.engine import LLMEngine, StepOutput
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams


def tiny_cuda_engine(utilization: float, **overrides: Any) -> LLMEngine:
    """The tiny preset on CUDA in float32: 8 streams, 160 tokens, mixed steps of 4 prompt tokens (with <= 4
    streams a mixed step's rows fit the top rung, 8), prefill and piecewise graphs up to 256 tokens (with
    the whole ladder a logprobs test's two engines took 72 s on an H100; larger steps run eager, counted).
    gpu_memory_utilization caps the whole process, so an engine built while another lives needs a higher
    cap than the first."""
    settings: dict[str, Any] = {
        "model": "tiny", "device": "cuda", "dtype": "float32", "max_num_seqs": 8, "max_model_len": 160,
        "gpu_memory_utilization": utilization, "mixed_prefill_tokens": 4,
        "cuda_graph_max_prefill_tokens": 256,
    }  # fmt: skip
    return LLMEngine(EngineConfig(**{**settings, **overrides}))


def run_outputs(
    eng: LLMEngine, prompts: list, params: SamplingParams | list[SamplingParams]
) -> list[list[StepOutput]]:
    """Submit every prompt with `params` (one for all, or one per prompt), step until none is unfinished;
    each request's step outputs, in order."""
    each = params if isinstance(params, list) else [params] * len(prompts)
    ids = [eng.add_request(p, q) for p, q in zip(prompts, each, strict=True)]
    out: dict[int, list[StepOutput]] = {i: [] for i in ids}
    while eng.has_unfinished():
        for o in eng.step():
            out[o.seq_id].append(o)
    return [out[i] for i in ids]


def run_all(eng: LLMEngine, prompts: list, params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
    """run_outputs' token ids: each request's tokens, in order."""
    return [[o.new_token_id for o in outs] for outs in run_outputs(eng, prompts, params)]


def cuda_graph_and_eager() -> tuple[LLMEngine, LLMEngine]:
    """The GPU tests' pair: the tiny engine with CUDA graphs, then the same eager (skips without CUDA)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    graph = tiny_cuda_engine(0.3)  # the second engine needs a higher cap (tiny_cuda_engine)
    return graph, tiny_cuda_engine(0.6, enforce_eager=True)
