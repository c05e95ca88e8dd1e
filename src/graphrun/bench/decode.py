"""`graphrun bench decode`: LLM decode steps through captured graphs vs eager, against a bandwidth floor.

Decode is bandwidth-bound (each step reads every weight once, plus each sequence's KV cache), so every
batch size is judged against that floor (decode_report.py), not only against eager. One engine serves every
point: per batch size B it prefills B random prompts in one step, then times `engine.step()` on pure decode
batches with graphs on and off in alternating blocks, so both paths see the same contexts, two ways:
- pipelined (the headline, what the targets use): the engine's default asynchronous scheduling, blocks
  of consecutive steps timed from one step's return to a later one's with no device sync between, so
  the host schedules step n+1 while the device runs step n, as in serving; a step costs about
  max(host, device);
- synchronized: a device sync before and after every step, so host and device times add up (the
  latency of one step run alone).
The context grows one token per step (512 -> ~620 with the defaults); each window's floor uses its mean
context. A probe step first runs the same packed inputs through both paths (greedy tokens must agree)
and times the graph replay alone with CUDA events. Peers live in peers.py. Without CUDA the tiny preset
runs on the sim backend: a smoke test of the code path whose timings mean nothing. With --profile
(CUDA only), each batch size then gets a per-kernel profile of its graphed step (decode_trace.py,
decode_profile.py); scripts/gpu-check runs it apart from the headline run, so a profiler left attached
can never touch the timings or the peers.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from graphrun.bench.decode_report import copy_bandwidth, decode_payload, print_decode, save_decode, step_floor
from graphrun.bench.decode_setup import BLOCK_STEPS, DecodeSetup
from graphrun.bench.decode_trace import profile_step
from graphrun.bench.report import written
from graphrun.bench.timing import release_memory, summarize, time_calls, time_interleaved
from graphrun.llm.decode_graph import DecodeGraphs
from graphrun.llm.decode_step import MASK_KINDS
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams
from graphrun.llm.step_inputs import DecodeInputs

log = logging.getLogger(__name__)


def build_engine(setup: DecodeSetup) -> LLMEngine:
    """One engine for every point: a seat and a graph rung per batch size, room for the whole window; the
    structured decode kinds captured too (an engine's first structured step would), so the probe times
    them."""
    top = max(setup.batch_sizes)
    engine = LLMEngine(
        EngineConfig(
            model=setup.model,
            device=setup.device,
            dtype=setup.dtype,
            max_num_seqs=top,
            max_model_len=setup.context + setup.new_tokens + 16,
            max_num_batched_tokens=max(2048, top * setup.context),  # every prompt in one prefill step
            gpu_memory_utilization=0.5,  # leaves room for the peers
            graph_backend="cuda" if setup.cuda else "sim",
            seed=setup.seed,
            async_scheduling=False,  # per-step timing: each step() runs and returns its own batch
            cuda_graph_mode=setup.cuda_graph_mode,
        )
    )
    engine.capture_structured_graphs()
    return engine


def random_prompts(num: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """`num` seeded prompts of `length` ids in [1, vocab): never all zeros, the same for every peer."""
    gen = torch.Generator().manual_seed(seed + num)
    return torch.randint(1, vocab_size, (num, length), generator=gen).tolist()


def _fill(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> list[int]:
    """Add the requests and step until each has its first token: from here on every step is decode."""
    ids = [engine.add_request(p, params) for p in prompts]
    got = dict.fromkeys(ids, 0)
    while not all(got.values()):
        for out in engine.step():
            got[out.seq_id] += 1
    if set(got.values()) != {1}:
        raise RuntimeError(f"prefill was spread over several steps ({got}); raise max_num_batched_tokens")
    return ids


def _checked_step(engine: LLMEngine, num_seqs: int) -> None:
    if len(engine.step()) != num_seqs:
        raise RuntimeError(f"a decode step of {num_seqs} sequences returned fewer tokens (preempted?)")


@contextmanager
def _graphs_off(engine: LLMEngine) -> Iterator[None]:
    """Decode eager for the duration (the engine's own fallback when it has no graphs)."""
    graphs, engine.decode_graphs = engine.decode_graphs, None
    pieces, engine.piecewise_graphs = engine.piecewise_graphs, None
    try:
        yield
    finally:
        engine.decode_graphs, engine.piecewise_graphs = graphs, pieces


def _probe(engine: LLMEngine, num_seqs: int, setup: DecodeSetup) -> dict[str, Any]:
    """One decode step run both ways on the same packed inputs, then the greedy graph replayed alone
    (without FULL decode graphs, --cuda-graph-mode piecewise or none: the whole step timed instead)."""
    graphs, scheduler = engine.decode_graphs, engine.scheduler
    if graphs is None:
        return _probe_step(engine, num_seqs, setup)
    batch = scheduler.schedule()
    if batch is None or batch.kind != "decode" or len(batch.seqs) != num_seqs:
        raise RuntimeError(f"expected a decode batch of {num_seqs}, got {batch and batch.kind}")
    try:
        step = engine._pack_decode(batch)
        eager = engine._eager_decode["greedy"](*step.to(engine.device).packed()).tolist()
        order = ("structured", "mask-greedy", "mask-sampling", "logprobs", "sampling", "greedy")
        kinds = [kind for kind in order if kind in graphs.runners]
        by_kind = {kind: _replay(graphs, kind, step, setup) for kind in kinds}
        graph = graphs.run(step, "greedy").tolist()  # the greedy graph last: last_tokens holds its tokens
    except Exception:
        scheduler.discard(batch)
        raise
    scheduler.update(batch, graph)  # replays rewrote the same cache slots with the same values
    return {"tokens_match": graph == eager, "replay": by_kind["greedy"], "replay_by_kind": by_kind}


def _replay(graphs: DecodeGraphs, kind: str, step: DecodeInputs, setup: DecodeSetup) -> dict[str, Any]:
    """One decode runner's replay times at the step's rung (the batch is greedy, so every kind samples
    the same tokens): the logprobs graph's cost over the sampling one's is what logprobs add to a step;
    the structured graph (the forward) plus a mask kind (LM head, masks all allowed, sampling) is a
    grammar row's step, host work aside."""
    if kind in MASK_KINDS:  # leaves the inputs in the rung's static buffers
        graphs.sample(graphs.run(step, "structured"), step, kind)
    else:
        graphs.run(step, kind)
    runner = graphs.runners[kind]
    args, kwargs = runner.static_inputs(step.num_rows)
    mode = "events" if setup.cuda else "host"
    return summarize(time_calls(lambda: runner(*args, **kwargs), setup.steps, 2, setup.sync, mode=mode))


def _probe_step(engine: LLMEngine, num_seqs: int, setup: DecodeSetup) -> dict[str, Any]:
    """_probe for an engine without FULL decode graphs: the step eager and on the engine's own path."""
    scheduler = engine.scheduler
    batch = scheduler.schedule()
    if batch is None or batch.kind != "decode" or len(batch.seqs) != num_seqs:
        raise RuntimeError(f"expected a decode batch of {num_seqs}, got {batch and batch.kind}")
    try:
        with _graphs_off(engine):
            eager = engine._run_decode(batch).tolist()
        graph = engine._run_decode(batch).tolist()  # rewrites the same cache slots with the same values
        mode = "events" if setup.cuda else "host"
        replay = time_calls(lambda: engine._run_decode(batch), setup.steps, 2, setup.sync, mode=mode)
    except Exception:
        scheduler.discard(batch)
        raise
    scheduler.update(batch, graph)
    return {"tokens_match": graph == eager, "replay": summarize(replay)}


def bench_batch(engine: LLMEngine, num_seqs: int, setup: DecodeSetup, bandwidth: float) -> dict[str, Any]:
    """One batch size: fill, probe, time graph and eager steps side by side, compare with the floor."""
    vocab = engine.model_config.vocab_size
    ids = _fill(engine, random_prompts(num_seqs, setup.context, vocab, setup.seed), setup.params)
    probe = _probe(engine, num_seqs, setup)

    def eager_step() -> None:
        with _graphs_off(engine):
            _checked_step(engine, num_seqs)

    fns: dict[str, Callable[[], object]] = {
        "graph": lambda: _checked_step(engine, num_seqs),
        "eager": eager_step,
    }
    rounds = max(1, setup.steps // BLOCK_STEPS)
    times = time_interleaved(fns, setup.steps, setup.warmup, setup.sync, rounds=rounds)
    pipelined = _time_pipelined(engine, num_seqs, setup)
    for seq_id in ids:
        engine.abort(seq_id)
    engine.step()  # the last pipelined step's tokens: nothing is left in flight
    engine.async_scheduling = False
    # decode step j after the fill sees context + 1 + j cached tokens; the probe was step 0
    first = setup.context + 2 + 2 * setup.warmup
    first_pipelined = first + 2 * setup.steps + BLOCK_STEPS
    num_pipelined = 2 * setup.pipelined_blocks * (BLOCK_STEPS + 1)
    context_mean = first_pipelined + (num_pipelined - 1) / 2
    sync_context_mean = first + (2 * setup.steps - 1) / 2
    graph, eager = pipelined["graph"], pipelined["eager"]
    graph_sync, eager_sync = summarize(times["graph"]), summarize(times["eager"])
    itemsize = engine.dtype.itemsize
    floor = step_floor(engine.model_config, num_seqs, context_mean, itemsize, bandwidth)
    sync_floor = step_floor(engine.model_config, num_seqs, sync_context_mean, itemsize, bandwidth)
    return {
        "batch": num_seqs,
        "context_first": first_pipelined,
        "context_last": first_pipelined + num_pipelined - 1,
        "context_mean": context_mean,
        "graph": graph,
        "eager": eager,
        "graph_sync": graph_sync,
        "eager_sync": eager_sync,
        "replay": probe["replay"],
        # per decode graph kind where FULL graphs run: logprobs vs sampling is what logprobs cost a step
        "replay_by_kind": probe.get("replay_by_kind", {}),
        "speedup": eager["median_ms"] / graph["median_ms"],
        **floor.against(graph["median_ms"]),
        "sync_context_mean": sync_context_mean,
        "graph_sync_over_floor": sync_floor.against(graph_sync["median_ms"])["graph_over_floor"],
        "tokens_per_s": num_seqs / graph["median_ms"] * 1e3,
        "tokens_match": probe["tokens_match"],
    }


def _time_pipelined(engine: LLMEngine, num_seqs: int, setup: DecodeSetup) -> dict[str, dict[str, float]]:
    """Per-step times of consecutive asynchronous steps, graph and eager blocks alternating (summaries).

    No device sync inside the window: in steady state step() returns once the previous step's tokens
    are on the host, so the time from one return to the BLOCK_STEPS-th next is BLOCK_STEPS steps of
    the pipeline as it runs in serving. Each block starts with one untimed step (the switch of path);
    one untimed block first fills the pipeline after synchronous scheduling.
    """
    engine.async_scheduling = True
    for _ in range(BLOCK_STEPS):
        engine.step()
    per_step: dict[str, list[float]] = {"graph": [], "eager": []}

    def checked() -> None:
        if len(engine.step()) != num_seqs:
            raise RuntimeError(f"a pipelined step of {num_seqs} sequences returned fewer tokens")

    for _ in range(setup.pipelined_blocks):
        for mode, times in per_step.items():
            with _graphs_off(engine) if mode == "eager" else nullcontext():
                checked()
                start = time.perf_counter()
                for _ in range(BLOCK_STEPS):
                    checked()
                times.append((time.perf_counter() - start) / BLOCK_STEPS)  # seconds, as summarize() takes
    return {mode: summarize(times) for mode, times in per_step.items()}


def _generate_once(engine: LLMEngine, prompt: list[int], params: SamplingParams) -> tuple[float, list[int]]:
    """Wall seconds from add_request to the request's finish, and its tokens."""
    start = time.perf_counter()
    engine.add_request(prompt, params)
    tokens: list[int] = []
    while engine.has_unfinished():
        tokens += [out.new_token_id for out in engine.step()]
    return time.perf_counter() - start, tokens


def bench_generate(engine: LLMEngine, setup: DecodeSetup, reps: int = 3) -> dict[str, Any]:
    """End to end at batch 1 (prefill included) with the engine's default asynchronous scheduling: median
    of `reps` after one warm-up; the same with synchronous scheduling (the overlap's gain); once eager.
    """
    prompt = random_prompts(1, setup.context, engine.model_config.vocab_size, setup.seed)[0]

    def median_run(async_scheduling: bool, n: int) -> tuple[float, list[int]]:
        engine.async_scheduling = async_scheduling
        runs = [_generate_once(engine, prompt, setup.params) for _ in range(n)]
        return statistics.median(s for s, _ in runs), runs[-1][1]

    median_run(True, 1)  # warm-up
    seconds, tokens = median_run(True, reps)
    sync_seconds, sync_tokens = median_run(False, reps)
    with _graphs_off(engine):
        _, eager_tokens = median_run(True, 1)
    engine.async_scheduling = False
    return {
        "prompt_tokens": setup.context,
        "new_tokens": len(tokens),
        "seconds": seconds,
        "tokens_per_s": len(tokens) / seconds,
        "sync_seconds": sync_seconds,
        "sync_tokens_per_s": len(sync_tokens) / sync_seconds,
        "scheduling": "asynchronous (sync_*: synchronous, for comparison)",
        "token_ids": tokens,
        "tokens_match_eager": tokens == eager_tokens == sync_tokens,
    }


def _profile(engine: LLMEngine, num_seqs: int, setup: DecodeSetup, bandwidth: float) -> dict[str, Any]:
    """--profile, after the timed runs: fresh requests filled to `context`, their next step profiled."""
    vocab = engine.model_config.vocab_size
    ids = _fill(engine, random_prompts(num_seqs, setup.context, vocab, setup.seed), setup.params)
    point = profile_step(engine, num_seqs, setup.context + 1, bandwidth)
    for seq_id in ids:
        engine.abort(seq_id)
    return point


def _measure_graphrun(setup: DecodeSetup, measured: dict[str, Any]) -> Any:
    """Every graphrun measurement, filled into `measured` as it is taken (a failure keeps what came
    before); returns the HF peer model built from the same weights (None without --peers)."""
    bandwidth = copy_bandwidth(setup.device, setup.copy_bytes if setup.cuda else 64 * 2**20, setup.sync)
    measured["copy_bandwidth_gbs"] = bandwidth / 1e9
    log.info("decode bench: device copy bandwidth %.1f GB/s", bandwidth / 1e9)
    engine = build_engine(setup)
    measured["engine"] = engine.describe()
    measured["model_config"] = dataclasses.asdict(engine.model_config)
    with torch.inference_mode():
        for num_seqs in setup.batch_sizes:
            log.info("decode bench: batch %d", num_seqs)
            measured["results"].append(bench_batch(engine, num_seqs, setup, bandwidth))
            if setup.profile:
                measured["profile"].append(_profile(engine, num_seqs, setup, bandwidth))
        measured["generate"] = bench_generate(engine, setup)
    if not setup.peers:
        return None
    from graphrun.bench.peers import try_build_hf_model

    return try_build_hf_model(engine.model, engine.dtype, engine.device)


def run_decode_bench(setup: DecodeSetup) -> dict[str, Any]:
    """Measure, run the peers if asked, print the table and JSON line, write JSON and PNG; the payload.

    A run that fails part-way still prints and writes what it measured, with the error in the payload.
    """
    measured: dict[str, Any] = {"copy_bandwidth_gbs": None, "engine": None, "model_config": None}
    measured.update(results=[], generate=None, error=None, profile=[])
    hf_model = None
    try:
        hf_model = _measure_graphrun(setup, measured)
    except Exception as exc:  # keep the batch sizes measured before the failure
        log.exception("decode bench: the run failed; writing what it measured")
        measured["error"] = f"{type(exc).__name__}: {exc}"
    release_memory()  # the engine is gone: its cache and graph pool go back before the peers run
    peers = None
    if setup.peers and measured["error"] is None:
        from graphrun.bench.peers import run_peers

        vocab = measured["model_config"]["vocab_size"]
        peers = run_peers(
            hf_model,
            lambda n: random_prompts(n, setup.context, vocab, setup.seed),
            setup.peer_batch_sizes,
            setup.new_tokens,
            measured["generate"]["token_ids"],
        )
    payload = decode_payload(setup, measured, peers)
    print_decode(payload)
    log.info("decode bench: wrote %s", written(*save_decode(payload, setup.out)))
    return payload


def run_decode(setup: DecodeSetup) -> int:
    """Run `graphrun bench decode`; exit status 1 when graph and eager greedy tokens disagreed."""
    payload = run_decode_bench(setup)
    return 0 if payload["ok"] else 1
