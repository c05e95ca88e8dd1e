"""Where a graph-captured decode step spends its device time: kernel totals per batch size (GPU only).

`PYTHONPATH=src python3 benchmarks/profile_decode.py [BATCH ...]`: builds qwen3-0.6b-shape, prefills
BATCH random 512-token prompts, then profiles 10 replays of the greedy decode graph with torch.profiler
and prints the kernels by total device time (per replay). A diagnostic: nothing is written or committed.
"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from graphrun.bench.decode import DecodeSetup, _fill, build_engine, random_prompts
from graphrun.llm.sampling_params import SamplingParams

REPLAYS = 10


def main(batches: list[int]) -> None:
    setup = DecodeSetup(
        model="qwen3-0.6b-shape", batch_sizes=tuple(batches), context=512, new_tokens=128, steps=25,
        warmup=2, dtype="bfloat16", device="cuda", peers=False, peer_batch_sizes=(), out=None,  # type: ignore[arg-type]
    )  # fmt: skip
    engine = build_engine(setup)
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    for batch in batches:
        with torch.inference_mode():
            ids = _fill(engine, random_prompts(batch, 512, engine.model_config.vocab_size, batch), params)
            sched = engine.scheduler
            step = sched.schedule()
            engine.decode_graphs.run(engine._pack_decode(step), "greedy")
            runner = engine.decode_graphs.runners["greedy"]
            args, kwargs = runner.static_inputs(batch)
            for _ in range(3):
                runner(*args, **kwargs)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(REPLAYS):
                    runner(*args, **kwargs)
                torch.cuda.synchronize()
            sched.discard(step)
            for seq_id in ids:
                engine.abort(seq_id)
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        events.sort(key=lambda e: e.device_time_total, reverse=True)
        total = sum(e.device_time_total for e in events) / REPLAYS
        print(f"== batch {batch}: {total / 1e3:.3f} ms of kernels per replay")
        for e in events[:14]:
            print(f"  {e.device_time_total / REPLAYS / 1e3:7.3f} ms  {e.count // REPLAYS:4d}x  {e.key[:90]}")


if __name__ == "__main__":
    main([int(b) for b in sys.argv[1:]] or [1, 64])
