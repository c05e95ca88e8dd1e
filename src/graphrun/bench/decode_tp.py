"""One rank's part of `graphrun bench decode --tp`: its engine shard, and per batch size the decode step
timed through the captured graph, eager, and the step's collectives alone.

Every rank of a tensor-parallel size runs this same job in a process of its own (decode_tp_run.py starts
them: rank r on cuda:r, NCCL for the model's collectives, a gloo group beside it). Each builds the same
LLMEngine over its shard, joined to the others (the ranks' KV block counts and capture verdicts agree),
with FULL decode graphs at exactly the benchmarked batch sizes. Per batch size B every rank adds the same
B seeded random prompts of `context` tokens (ids never 0) and steps until each has its first token, so
the KV cache holds real context; then it packs the next decode batch once and times, back to back:
- graph: replays of the captured greedy decode graph on those inputs (zero-copy: inputs in place),
  collectives inside the graph (its tokens first checked against eager's on the same inputs);
- eager: the same step function on the same inputs, one launch per kernel and per collective;
- collectives (decode_tp_comm.py): the step's own all-reduces (and, apart, all of its collectives,
  the logits all-gather included) captured alone in a graph.
The batch is then dropped, never advanced: each timed call rewrites the same cache slot, so every call
sees the same context (context + 1 cached tokens).

Timing: graph and eager interleave in rounds after warm-up (timing.time_interleaved); on a GPU with CUDA
events, calls back to back, so each call's time is max(host launch, device work), the steady state of
consecutive steps; medians of `4 x --steps` calls per path. The ranks meet at a barrier (gloo) and a
device sync before each timed set; inside it the collectives keep them in step. Every rank times its
own calls; rank 0 gathers every rank's rows and reports its own, with the others beside them. On the
CPU (tests) the graphs are the sim backend's and the times are host times of gloo ranks: meaningless.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from graphrun.bench.decode import random_prompts
from graphrun.bench.decode_setup import TP_ITERS_PER_STEP, TP_ROUNDS, TP_WARMUP, DecodeSetup
from graphrun.bench.decode_tp_comm import (
    ALL_REDUCE,
    Collective,
    CollectivesGraph,
    record_collectives,
    summary,
)
from graphrun.bench.timing import summarize, time_calls, time_interleaved
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.parallel.control import RankGroups
from graphrun.llm.parallel.group import ParallelGroup
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.scheduler import ScheduledBatch

log = logging.getLogger(__name__)

# greedy; room for the first token (the fill) and the timed step, which never advances the sequences
PARAMS = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def measure_rank(group: ParallelGroup, setup: DecodeSetup) -> dict[str, Any] | None:
    """This rank's measurements at every batch size; rank 0 returns every rank's, the others None.

    Every rank of `group` must call it together (world size 1: alone, no collectives).
    """
    control = None if group.config.is_single else dist.new_group(backend="gloo")
    engine = build_rank_engine(setup, group, control)
    try:
        with torch.inference_mode():
            rows = [_time_batch(engine, num_seqs, setup, control) for num_seqs in setup.batch_sizes]
        result = {"rank": group.rank, "engine": engine.describe(), "rows": rows}
        everyone: list[Any] = [result]
        if control is not None:
            everyone = [None] * group.world_size
            dist.all_gather_object(everyone, result, group=control)
    finally:
        engine.close()  # a tensor-parallel engine leaves its groups
    return _merge(everyone) if group.rank == 0 else None


def build_rank_engine(
    setup: DecodeSetup, group: ParallelGroup, control: dist.ProcessGroup | None
) -> LLMEngine:
    """This rank's engine: FULL decode graphs at the batch sizes, eager prefill, room for one window."""
    top = max(setup.batch_sizes)
    config = EngineConfig(
        model=setup.model,
        device=setup.device,
        dtype=setup.dtype,
        max_num_seqs=top,
        max_model_len=setup.context + 16,
        max_num_batched_tokens=max(2048, top * setup.context),  # every prompt in one prefill step
        gpu_memory_utilization=0.5,
        graph_backend="cuda" if setup.cuda else "sim",
        seed=setup.seed,
        async_scheduling=False,  # step() returns its own batch's tokens: the fill knows when it is done
        cuda_graph_mode="full",
        cuda_graph_sizes=setup.batch_sizes,
        cuda_graph_max_prefill_tokens=0,  # prefill is not timed: no prefill graphs to capture
        tensor_parallel_size=group.world_size,
    )
    ranks = None if control is None else RankGroups(group, control)
    return LLMEngine(config, ranks=ranks)


def _fill(engine: LLMEngine, num_seqs: int, setup: DecodeSetup) -> list[int]:
    """Add num_seqs seeded prompts and step until each has its first token (the same on every rank)."""
    prompts = random_prompts(num_seqs, setup.context, engine.model_config.vocab_size, setup.seed)
    ids = [engine.add_request(p, PARAMS) for p in prompts]
    waiting = set(ids)
    while waiting:
        waiting -= {out.seq_id for out in engine.step()}
    return ids


def _time_batch(
    engine: LLMEngine, num_seqs: int, setup: DecodeSetup, control: dist.ProcessGroup | None
) -> dict[str, Any]:
    """One batch size: fill, pack one decode batch, time graph, eager and the collectives; drop it."""
    ids = _fill(engine, num_seqs, setup)
    batch = engine.scheduler.schedule()
    if batch is None or batch.kind != "decode" or len(batch.seqs) != num_seqs:
        raise RuntimeError(f"expected a decode batch of {num_seqs}, got {batch and batch.kind}")
    try:
        row = _time_step(engine, batch, num_seqs, setup, control)
    finally:
        engine.scheduler.discard(batch)
        for seq_id in ids:
            engine.abort(seq_id)
    return row


def _time_step(
    engine: LLMEngine,
    batch: ScheduledBatch,
    num_seqs: int,
    setup: DecodeSetup,
    control: dist.ProcessGroup | None,
) -> dict[str, Any]:
    graphs = engine.decode_graphs
    if graphs is None:
        raise RuntimeError(f"no decode graphs on rank {engine.group.rank}: {engine.describe()['graphs_off']}")
    step, eager_step = engine._pack_decode(batch), engine._eager_decode["greedy"]
    packed = step.to(engine.device).packed()
    eager_tokens = eager_step(*packed).tolist()
    graph_tokens = graphs.run(step, "greedy").tolist()  # leaves the inputs in the rung's static buffers
    runner = graphs.runners["greedy"]
    args, kwargs = runner.static_inputs(num_seqs)  # raises when the rung runs eager
    collectives = record_collectives(lambda: eager_step(*packed))
    fns = {"graph": lambda: runner(*args, **kwargs), "eager": lambda: eager_step(*packed)}
    _barrier(control, setup)
    iters, mode = TP_ITERS_PER_STEP * setup.steps, "events" if setup.cuda else "host"
    times = time_interleaved(fns, iters, TP_WARMUP, setup.sync, rounds=TP_ROUNDS, mode=mode)
    return {
        "batch": num_seqs,
        "context": setup.context + 1,
        "tokens_match": graph_tokens == eager_tokens,  # greedy, the same inputs
        "graph": summarize(times["graph"]),
        "eager": summarize(times["eager"]),
        "collectives": summary(collectives),
        "all_reduce": _time_collectives(
            engine, [c for c in collectives if c.kind == ALL_REDUCE], setup, control
        ),
        "all_collectives": _time_collectives(engine, collectives, setup, control),
    }


def _time_collectives(
    engine: LLMEngine,
    collectives: Sequence[Collective],
    setup: DecodeSetup,
    control: dist.ProcessGroup | None,
) -> dict[str, float] | None:
    """Replays of a graph of only these collectives (None when the step has none: one rank)."""
    if not collectives:
        return None
    graph = CollectivesGraph(engine.group, tuple(collectives), engine.device)
    try:
        _barrier(control, setup)
        mode = "events" if setup.cuda else "host"
        return summarize(
            time_calls(graph.replay, TP_ITERS_PER_STEP * setup.steps, TP_WARMUP, setup.sync, mode=mode)
        )
    finally:
        graph.release()


def _barrier(control: dist.ProcessGroup | None, setup: DecodeSetup) -> None:
    """Every rank's queued work done, then every rank here, before a timed set starts."""
    setup.sync()
    if control is not None:
        dist.barrier(group=control)


def _merge(results: list[Any]) -> dict[str, Any]:
    """Rank 0's rows, each with every rank's graph and eager medians (rank order) beside it."""
    lead = results[0]
    for index, row in enumerate(lead["rows"]):
        for path in ("graph", "eager"):
            row[f"{path}_median_ms_by_rank"] = [r["rows"][index][path]["median_ms"] for r in results]
    return {"engine": lead["engine"], "rows": lead["rows"]}
