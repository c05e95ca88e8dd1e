"""Where a mixed step (decode rows + prompt chunks) spends its time (GPU): eager (engine._run_mixed_eager,
cuda graph mode full) or through the piecewise graphs (modes piecewise, full_and_piecewise).

`PYTHONPATH=src python3 benchmarks/profile_mixed_step.py [MIXED_TOKENS] [CUDA_GRAPH_MODE]`: builds
qwen3-0.6b-shape with mixed_prefill_tokens=MIXED_TOKENS (default 512) and the cuda graph mode (default
full: mixed steps above the top decode rung run eager), starts 48 streams decoding (64-token prompts), then
queues 8 prompts of 1,000 random tokens so the following steps are mixed. Prints each step's wall time
(synchronised) with its kind and token count, then torch.profiler's top ops by host and device time over
three mixed steps. A diagnostic: nothing is written or committed.
"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams


def main(mixed: int, mode: str) -> None:
    engine = LLMEngine(
        EngineConfig(
            model="qwen3-0.6b-shape",
            mixed_prefill_tokens=mixed,
            max_num_seqs=64,
            seed=0,
            cuda_graph_mode=mode,
        )
    )
    gen = torch.Generator().manual_seed(0)
    vocab = engine.model_config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    for _ in range(48):
        engine.add_request(torch.randint(10, vocab, (64,), generator=gen).tolist(), params)
    for _ in range(6):
        engine.step()
    for _ in range(8):
        engine.add_request(torch.randint(10, vocab, (1000,), generator=gen).tolist(), params)
    kinds = []
    schedule = engine.scheduler.schedule

    def spy():  # type: ignore[no-untyped-def]
        batch = schedule()
        kinds.append((batch.kind, batch.num_tokens, len(batch.seqs)) if batch is not None else None)
        return batch

    engine.scheduler.schedule = spy  # type: ignore[method-assign]
    for _ in range(12):
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.step()
        torch.cuda.synchronize()
        print(f"step {kinds[-1]}: {1e3 * (time.perf_counter() - start):.2f} ms")
    for _ in range(8):
        engine.add_request(torch.randint(10, vocab, (1000,), generator=gen).tolist(), params)
    engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            engine.step()
        torch.cuda.synchronize()
    print("steps profiled:", kinds[-3:])
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))
    print(table.table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 512, sys.argv[2] if len(sys.argv) > 2 else "full")
