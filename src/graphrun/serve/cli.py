"""`graphrun serve`: the OpenAI-compatible server from the command line, with a graceful SIGTERM.

Flags follow vLLM where they overlap. Before anything starts, every flag is checked without torch
(preflight.py: model folder, context length, port, settings): a problem is one line on stderr and exit
status 2. Graph flags that cannot take effect (graphs off) are named in one warning each.

On SIGTERM (or Ctrl-C) the server drains: /health and new requests answer 503 while the listening
socket stays open (a load balancer sees the 503 and moves on), in-flight requests finish within
--drain-seconds (the rest get a 503 error), then uvicorn shuts down and the process exits 0. A second
signal skips the wait.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from graphrun.compile_flags import add_compile_flags, add_cuda_graph_mode_flag
from graphrun.envvars import api_keys, serve_trace_path
from graphrun.errors import GraphrunError
from graphrun.llm.engine_config import (
    CAPTURE_MODES,
    DTYPES,
    GRAPH_BACKENDS,
    SERVE_MIXED_PREFILL_TOKENS,
    EngineConfig,
    serve_mixed_prefill_tokens,
)
from graphrun.parallel_flags import add_tensor_parallel_flag
from graphrun.preflight import check_engine_model, check_port_free, check_serve_extra, idle_graph_flags
from graphrun.refuse import refuse
from graphrun.serve.act.cli import add_act_flags, run_act, wants_act
from graphrun.serve.config import ServeConfig, default_served_model_name
from graphrun.serve.infer.cli import add_infer_flags, run_infer, wants_infer

if TYPE_CHECKING:  # uvicorn and FastAPI are the optional `serve` extra: imported when serving
    pass

log = logging.getLogger(__name__)

CPU_DEFAULT_MODEL, GPU_DEFAULT_MODEL = "tiny", "qwen3-0.6b-shape"  # without --model


def _serve_mixed_default_text() -> str:
    """'64 for none, 64 for full, ...' for the help text: every mode's default."""
    return ", ".join(f"{n} for {mode}" for mode, n in SERVE_MIXED_PREFILL_TOKENS.items())


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """Register `serve` and its flags (defaults from EngineConfig and ServeConfig)."""
    eng, srv = EngineConfig(), ServeConfig()
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (completions, chat, /metrics, /health)")
    p.add_argument(
        "--model", default=None, help="preset or HF folder (default: qwen3-0.6b-shape with CUDA, else tiny)"
    )
    p.add_argument("--host", default=srv.host)
    p.add_argument("--port", type=int, default=srv.port)
    p.add_argument(
        "--served-model-name",
        default=None,
        help="the `model` clients send (default: a checkpoint folder's name, or the preset's)",
    )
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs: decode runs eager")
    p.add_argument(
        "--cuda-graph-max-bs",
        type=int,
        default=None,
        help="top of the capture ladder (default: --max-num-seqs; 0: off)",
    )
    p.add_argument("--cuda-graph-sizes", type=_int_list, default=(), help="explicit ladder, e.g. 1,2,4,8")
    p.add_argument(
        "--cuda-graph-max-prefill-tokens",
        type=int,
        default=None,
        help="fresh prompts up to this many tokens prefill in a graph (default: up to 2048; 0: off)",
    )
    p.add_argument(
        "--capture",
        default=eng.capture,
        choices=CAPTURE_MODES,
        help="now: /health says 200 once every graph is captured; background: 200 once the weights are "
        "loaded, requests run eager meanwhile and each graph size switches to replay as it is captured "
        "(between engine steps, largest first)",
    )
    add_compile_flags(p)
    add_cuda_graph_mode_flag(p)
    add_tensor_parallel_flag(p)
    p.add_argument(
        "--mixed-prefill-tokens",
        type=int,
        default=None,
        help="prompt tokens a decode step may carry, so streams keep pace while prompts prefill "
        f"(default by --cuda-graph-mode: {_serve_mixed_default_text()}; with full a mixed step up to the top "
        "capture size replays the decode graph and a larger budget makes larger steps that run eager; with "
        "piecewise graphs mixed steps of any size replay those; 0: prefill and decode steps alternate)",
    )
    p.add_argument(
        "--max-mixed-prefill-tokens",
        type=int,
        default=None,
        help="how far the mixed budget grows while prompts queue up: a mixed step takes enough prompt "
        "tokens to clear the queue in a few steps, between --mixed-prefill-tokens and this (default: the "
        "top piecewise graph size with piecewise graphs, else no growth; equal to --mixed-prefill-tokens: "
        "a fixed budget)",
    )
    p.add_argument(
        "--faults",
        type=_replay_fault_rate,
        default=0.0,
        metavar="replay=RATE",
        help="a fault drill: once every graph is captured, this fraction of graph replays fails and the "
        "call runs eager, counted as replay_error in /metrics (e.g. replay=0.01; default: none)",
    )
    p.add_argument(
        "--no-async-scheduling",
        dest="async_scheduling",
        action="store_false",
        help="finish each step before scheduling the next (default: overlap host scheduling with the GPU)",
    )
    p.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=eng.enable_prefix_caching,
        help="reuse the KV blocks of prompt starts seen before (default on, as vLLM); "
        "--no-enable-prefix-caching: every prompt prefills whole",
    )
    p.add_argument(
        "--graph-backend",
        default=eng.graph_backend,
        choices=GRAPH_BACKENDS,
        help="auto: CUDA graphs on a GPU, none (eager decode) elsewhere, as GraphRunner's backend='auto'; "
        "sim: the CPU graph simulator (slow to start, for tests); cuda: CUDA graphs or an error",
    )
    p.add_argument("--max-num-seqs", type=int, default=eng.max_num_seqs)
    p.add_argument("--max-model-len", type=int, default=None, help="default: min(4096, the model's limit)")
    p.add_argument("--gpu-memory-utilization", type=float, default=eng.gpu_memory_utilization)
    p.add_argument("--dtype", default=eng.dtype, choices=DTYPES)
    p.add_argument(
        "--max-queue", type=int, default=srv.max_queue, help="requests queued beyond --max-num-seqs"
    )
    p.add_argument("--drain-seconds", type=float, default=srv.drain_seconds, help="SIGTERM: wait this long")
    p.add_argument(
        "--engine-process",
        action=argparse.BooleanOptionalAction,
        default=srv.engine_process,
        help="run the engine in a process of its own, away from HTTP's GIL (default); "
        "--no-engine-process: a thread of the server's process",
    )
    p.add_argument(
        "--trace-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="record every engine step's timeline and write it there as JSON on exit, with the streams' "
        "sends in <PATH stem>.sends.json (default: GRAPHRUN_SERVE_TRACE; unset: off)",
    )
    _add_access_flags(p, srv)
    add_infer_flags(p)
    add_act_flags(p)


def _add_access_flags(p: argparse.ArgumentParser, srv: ServeConfig) -> None:
    """Who may call and how much they may send (serve/auth.py, serve/body_limit.py)."""
    p.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        metavar="KEY",
        help="require `Authorization: Bearer KEY` on every route but /health and /metrics; repeat for "
        "several keys (default: GRAPHRUN_API_KEY, comma-separated, which `ps` does not show)",
    )
    p.add_argument(
        "--metrics-require-api-key",
        action="store_true",
        help="/metrics needs a key too (default: open, like /health)",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        metavar="BYTES",
        default=srv.max_request_bytes,
        help=f"a larger request body gets 413 before it is read (default {srv.max_request_bytes})",
    )


def _int_list(text: str) -> tuple[int, ...]:
    """ "1,2,4" -> (1, 2, 4), for argparse."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def run_serve(args: argparse.Namespace) -> int:
    """Check every flag before anything starts (a problem: one line on stderr, exit 2), then serve."""
    if wants_infer(args) or wants_act(args):  # a tensor model (/v1/infer) or a policy (/act), not an LLM
        try:
            serve_config = _configs(args, CPU_DEFAULT_MODEL)[1]
        except GraphrunError as exc:
            return refuse("serve", exc)
        return run_act(args, serve_config) if wants_act(args) else run_infer(args, serve_config)
    try:  # no torch yet: a bad flag, path or port answers in milliseconds
        engine_config, serve_config = _configs(args, args.model or CPU_DEFAULT_MODEL)
        _check_before_start(engine_config, serve_config, check_model=args.model is not None)
    except GraphrunError as exc:
        return refuse("serve", exc)
    import torch

    try:
        if args.model is None:  # the default model depends on the device: checked now
            model = GPU_DEFAULT_MODEL if torch.cuda.is_available() else CPU_DEFAULT_MODEL
            engine_config, serve_config = _configs(args, model)
            check_engine_model(engine_config)
        off = engine_config.graphs_off(engine_config.resolved_device())
    except GraphrunError as exc:
        return refuse("serve", exc)
    if off is not None:  # one line an operator reads: this server decodes without graphs, and why
        log.info("%s: decode runs eager", engine_config.why_eager(engine_config.resolved_device()))
    for note in idle_graph_flags(engine_config, off):
        log.warning("%s", note)
    return serve(engine_config, serve_config)


def _configs(args: argparse.Namespace, model: str) -> tuple[EngineConfig, ServeConfig]:
    """The engine's and the server's settings from the flags (validated by the dataclasses)."""
    engine_config = EngineConfig(
        model=model,
        dtype=args.dtype,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
        cuda_graph_max_bs=args.cuda_graph_max_bs,
        cuda_graph_sizes=args.cuda_graph_sizes,
        cuda_graph_max_prefill_tokens=args.cuda_graph_max_prefill_tokens,
        async_scheduling=args.async_scheduling,
        enable_prefix_caching=args.enable_prefix_caching,
        mixed_prefill_tokens=(
            serve_mixed_prefill_tokens(args.cuda_graph_mode)
            if args.mixed_prefill_tokens is None
            else args.mixed_prefill_tokens
        ),
        max_mixed_prefill_tokens=args.max_mixed_prefill_tokens,
        graph_backend=args.graph_backend,
        compile=args.compile,
        compile_cache_dir=args.compile_cache_dir,
        capture=args.capture,
        cuda_graph_mode=args.cuda_graph_mode,
        replay_fault_rate=args.faults,
        tensor_parallel_size=args.tensor_parallel_size,
    )
    serve_config = ServeConfig(
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name or default_served_model_name(model),
        max_queue=args.max_queue,
        drain_seconds=args.drain_seconds,
        engine_process=args.engine_process,
        api_keys=tuple(args.api_keys or ()) or api_keys(),  # the flags replace the variable
        metrics_require_api_key=args.metrics_require_api_key,
        max_request_bytes=args.max_request_bytes,
        trace_path=args.trace_file or serve_trace_path(),  # the flag replaces the variable
    )
    return engine_config, serve_config


def _check_before_start(engine: EngineConfig, serve: ServeConfig, check_model: bool) -> None:
    """Everything `graphrun serve` can check before torch (preflight.py): the extra, the model, the port."""
    check_serve_extra()
    if check_model:
        check_engine_model(engine)
    check_port_free(serve.host, serve.port)


def _replay_fault_rate(text: str) -> float:
    """--faults replay=RATE -> RATE in [0, 1] (else a ValueError, which argparse reports)."""
    key, sep, value = text.strip().partition("=")
    rate = float(value) if key.strip() == "replay" and sep else -1.0  # float() raises for a non-number
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"--faults must be replay=RATE with RATE in [0, 1], got {text!r}")
    return rate


def serve(engine_config: EngineConfig, serve_config: ServeConfig) -> int:
    """Serve until SIGTERM/SIGINT has drained the server; 1 when the engine failed (at start or later)."""
    from graphrun.serve.app import build_app
    from graphrun.serve.auth import log_access_policy
    from graphrun.serve.draining import serve_until_drained
    from graphrun.serve.llm_model import llm_client

    log_access_policy(serve_config)
    client = llm_client(engine_config, serve_config)
    return serve_until_drained(build_app(client, serve_config, engine_config), client, serve_config)
