"""Running requests through an engine to the end: the one helper the engine tests share."""

from graphrun.llm.engine import LLMEngine
from graphrun.llm.sampling_params import SamplingParams


def run_all(eng: LLMEngine, prompts: list, params: SamplingParams) -> list[list[int]]:
    """Submit every prompt with `params`, step until none is unfinished; each request's tokens, in order."""
    ids = [eng.add_request(p, params) for p in prompts]
    out: dict[int, list[int]] = {i: [] for i in ids}
    while eng.has_unfinished():
        for o in eng.step():
            out[o.seq_id].append(o.new_token_id)
    return [out[i] for i in ids]
