"""Programmatic dependent launch on vs off in the graphed decode step (issue 18, item 3; GPU only).

A decode step is ~200 small kernels; with PDL (kernels/pdl.py) each of our Triton kernels may start
while the previous one drains, the projections loading their first weight tile before they wait. This
measures what that buys. One engine (qwen3-0.6b-shape, bf16, prefix caching off, no graphs of its own)
holds the weights and the KV cache; two sets of greedy decode graphs are captured over them, fresh, at
the batch sizes asked: "on" as shipped (PDL wherever pdl.pdl_supported says yes), "off" with that
decision function patched to say no while it is captured (the patch lives in this process only). This
A/B decided that PDL ships on.
Per batch size B:
- greedy tokens: B seeded prompts of --context tokens decoded --steps tokens through each set in turn
  (the same prompts, prefilled afresh); the first step at which the two sets' tokens differ, None
  when they never do;
- timing: B prompts prefilled to --context tokens, one decode step's inputs staged into both sets (their
  tokens must agree), then each set's greedy graph replayed in interleaved rounds (the order rotating),
  each replay between two CUDA events; a point is the median. The floor is the step's bytes (weights
  and filled KV cache, graphrun.bench.decode_bytes) over the measured copy bandwidth.

    PYTHONPATH=src python3 benchmarks/pdl_ab.py --out OUT

Prints a table then one JSON line; --out writes pdl-ab-<device>.json (device, torch, date, commit,
settings, rows). Exits 1 when the two sets' tokens differ, 2 without a GPU that takes PDL.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from prometheus_client import CollectorRegistry

from graphrun.bench.decode import _fill, random_prompts
from graphrun.bench.decode_report import copy_bandwidth, step_floor
from graphrun.bench.report import emit, environment, headline, print_table
from graphrun.llm.decode_graph import DecodeGraphs, DecodeShape
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.kernels import pdl
from graphrun.llm.sampling_params import SamplingParams

VARIANTS = ("on", "off")
SEED = 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwen3-0.6b-shape")
    p.add_argument("--batch-sizes", default="1,4,16,64")
    p.add_argument("--context", type=int, default=512, help="prompt tokens before the timed step")
    p.add_argument("--steps", type=int, default=64, help="greedy tokens compared per batch size")
    p.add_argument("--iters", type=int, default=300, help="timed replays per variant and batch size")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds the replays are split into")
    p.add_argument("--out", default=None, help="folder for pdl-ab-<device>.json")
    return p.parse_args()


def build_engine(args: argparse.Namespace, top: int) -> LLMEngine:
    """The weights and KV cache both graph sets run over; it captures no graphs itself (mode none), and
    without prefix caching a prompt prefilled twice is computed twice, the same way."""
    return LLMEngine(
        EngineConfig(
            model=args.model, device="cuda", dtype="bfloat16", max_num_seqs=top,
            max_model_len=args.context + args.steps + 16,
            max_num_batched_tokens=max(2048, top * args.context),
            gpu_memory_utilization=0.5, seed=SEED, async_scheduling=False, cuda_graph_mode="none",
            enable_prefix_caching=False,
        )
    )  # fmt: skip


@contextmanager
def pdl_forced(on: bool) -> Iterator[None]:
    """PDL as shipped, on where supported (on), or off for everything launched inside (the decision
    function patched to say no)."""
    decide = pdl.pdl_supported
    if not on:
        pdl.pdl_supported = lambda device: False
    try:
        yield
    finally:
        pdl.pdl_supported = decide


def capture(engine: LLMEngine, sizes: list[int], on: bool) -> DecodeGraphs:
    """A fresh set of decode graphs at `sizes`, every kernel of ours launched with PDL on or off."""
    return capture_under(engine, sizes, pdl_forced(on), f"PDL {'on' if on else 'off'}")


def capture_under(
    engine: LLMEngine, sizes: list[int], patches: AbstractContextManager[None], label: str
) -> DecodeGraphs:
    """A fresh set of decode graphs at `sizes`, captured with `patches` in place; every rung captured."""
    shape = DecodeShape(
        engine.config.max_num_seqs, engine.max_blocks_per_seq, engine.max_model_len, engine.num_blocks,
        engine.config.block_size, engine.model_config.vocab_size,
    )  # fmt: skip
    with patches:
        graphs = DecodeGraphs(
            engine.model, engine.kv_caches, engine.last_tokens, shape, sizes, backend="cuda",
            registry=CollectorRegistry(),  # each set its own: the runners' names repeat
        )  # fmt: skip
    eager = [
        f"{kind} {st.size}" for kind, r in graphs.runners.items() for st in r.status() if not st.captured
    ]
    if eager:  # an eager rung would launch with the decision of the moment, not the variant's
        raise RuntimeError(f"{label}: rungs not captured: {eager}")
    return graphs


def rollout(engine: LLMEngine, graphs: DecodeGraphs, prompts: list[list[int]], steps: int) -> list[list[int]]:
    """Each prompt's greedy tokens, decoded through `graphs` (the prefill runs eager, the same each time)."""
    engine.decode_graphs = graphs
    params = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True)
    ids = [engine.add_request(p, params) for p in prompts]
    tokens: dict[int, list[int]] = {i: [] for i in ids}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.seq_id].append(out.new_token_id)
    engine.decode_graphs = None
    return [tokens[i] for i in ids]


def first_difference(a: list[list[int]], b: list[list[int]]) -> int | None:
    """The first step at which any sequence's tokens differ, None when none does."""
    steps = [
        i for x, y in zip(a, b, strict=True) for i, (s, t) in enumerate(zip(x, y, strict=True)) if s != t
    ]
    return min(steps, default=None)


def time_replays(graphs: dict[str, DecodeGraphs], batch: int, args: argparse.Namespace) -> dict[str, float]:
    """Median ms per greedy replay per graph set, the sets interleaved in rounds whose order rotates."""
    names = list(graphs)
    calls = {}
    for name, g in graphs.items():
        runner = g.runners["greedy"]
        call_args, call_kwargs = runner.static_inputs(batch)
        calls[name] = (runner, call_args, call_kwargs)
    events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {name: [] for name in calls}
    per_round = max(1, (args.warmup + args.iters) // args.rounds)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            runner, call_args, call_kwargs = calls[name]
            for i in range(per_round):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                runner(*call_args, **call_kwargs)
                end.record()
                if r * per_round + i >= args.warmup:
                    events[name].append((start, end))
    torch.cuda.synchronize()
    return {name: statistics.median(s.elapsed_time(e) for s, e in ev) for name, ev in events.items()}


def timed_point(
    engine: LLMEngine, graphs: dict[str, DecodeGraphs], batch: int, args: argparse.Namespace
) -> dict:
    """Prefill `batch` prompts, stage one decode step into every set; each set's tokens and replay time."""
    prompts = random_prompts(batch, args.context, engine.model_config.vocab_size, SEED + 1)
    ids = _fill(engine, prompts, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    scheduler = engine.scheduler
    step_batch = scheduler.schedule()
    if step_batch is None or step_batch.kind != "decode" or len(step_batch.seqs) != batch:
        raise RuntimeError(f"expected a decode batch of {batch}, got {step_batch and step_batch.kind}")
    try:
        step = engine._pack_decode(step_batch)
        tokens = {name: g.run(step, "greedy").tolist() for name, g in graphs.items()}
        ms = time_replays(graphs, batch, args)
    finally:
        scheduler.discard(step_batch)
        for seq_id in ids:
            engine.abort(seq_id)
    return {"ms": ms, "tokens": tokens}


def measure(engine: LLMEngine, graphs: dict[str, DecodeGraphs], args: argparse.Namespace, bw: float) -> list:
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = random_prompts(batch, args.context, engine.model_config.vocab_size, SEED)
        greedy = {name: rollout(engine, g, prompts, args.steps) for name, g in graphs.items()}
        point = timed_point(engine, graphs, batch, args)
        on, off = point["ms"]["on"], point["ms"]["off"]
        floor = step_floor(engine.model_config, batch, args.context + 1, engine.dtype.itemsize, bw)
        floor_ms = floor.against(on)["floor_ms"]
        rows.append({
            "batch": batch, "context": args.context + 1, "on_ms": on, "off_ms": off, "on_over_off": on / off,
            "saved_us": (off - on) * 1e3, "floor_ms": floor_ms, "on_over_floor": on / floor_ms,
            "off_over_floor": off / floor_ms, "tokens_match": point["tokens"]["on"] == point["tokens"]["off"],
            "greedy_first_difference": first_difference(greedy["on"], greedy["off"]),
        })  # fmt: skip
        print(f"batch {batch}: on {on:.4f} ms, off {off:.4f} ms, floor {floor_ms:.4f} ms")
    return rows


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available() or not pdl.pdl_supported(torch.device("cuda")):
        print("pdl_ab needs a GPU that takes programmatic dependent launch (compute capability >= 9)")
        return 2
    bandwidth = copy_bandwidth("cuda", 2**30, torch.cuda.synchronize)
    sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    with torch.inference_mode():
        engine = build_engine(args, max(sizes))
        graphs = {name: capture(engine, sizes, on=name == "on") for name in VARIANTS}
        rows = measure(engine, graphs, args, bandwidth)
    env = environment()
    print(headline(env))
    print_table(rows, ("batch", "on_ms", "off_ms", "on_over_off", "saved_us", "floor_ms", "on_over_floor",
                       "off_over_floor", "tokens_match", "greedy_first_difference"))  # fmt: skip
    ok = all(r["tokens_match"] and r["greedy_first_difference"] is None for r in rows)
    payload = {"benchmark": "pdl_ab", **env, "model": args.model, "dtype": "bfloat16", "steps": args.steps,
               "iters": args.iters, "warmup": args.warmup, "copy_bandwidth_gbs": bandwidth / 1e9, "ok": ok,
               "rows": rows}  # fmt: skip
    emit(payload, args.out, "pdl-ab")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
