"""The calls every tensor-parallel engine test makes on each engine of a pair (TP=1, TP=2): requests
of several lengths, then mid-flight an abort, a late arrival and two choices of one prompt."""

from __future__ import annotations

from collections import defaultdict

from graphrun.llm.engine import LLMEngine
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.structured_output import StructuredOutput

PROMPTS = [[5 + (7 * i + n) % 200 for i in range(n)] for n in (3, 11, 6, 19)]
MAX_TOKENS = 24
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
SEEDED = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.9, top_k=50, top_p=0.9, seed=11, ignore_eos=True)
UNSEEDED = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, ignore_eos=True)  # seed from seq id
# a grammar that cannot end before MAX_TOKENS: every step masks, and the requests run to the length limit
STRUCTURED = SamplingParams(
    max_tokens=MAX_TOKENS, temperature=0.9, seed=5, structured_output=StructuredOutput.regex("[a-z ]{30,40}")
)
COMMON = dict(model="tiny", max_num_seqs=4, max_model_len=128, mixed_prefill_tokens=8)


def run_scenario(engine: LLMEngine, params: list[SamplingParams]) -> dict[int, list[int]]:
    """Three requests, then (mid-flight) an abort, a late arrival and two choices of one prompt; every
    sequence's tokens."""
    seq_ids = [engine.add_request(PROMPTS[i], params[i % len(params)]) for i in range(3)]
    tokens: dict[int, list[int]] = defaultdict(list)
    steps = 0
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.seq_id].append(out.new_token_id)
        steps += 1
        if steps == 4:
            engine.abort(seq_ids[1])
            seq_ids.append(engine.add_request(PROMPTS[3], params[0]))
        if steps == 6:
            seq_ids += engine.add_choices(PROMPTS[0], params[0], 2)
    assert len(seq_ids) == 6 and all(seq in tokens for seq in seq_ids if seq != seq_ids[1])
    return dict(tokens)
