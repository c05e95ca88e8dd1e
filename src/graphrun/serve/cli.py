"""`graphrun serve`: the OpenAI-compatible server from the command line, with a graceful SIGTERM.

Flags follow vLLM where they overlap. On SIGTERM (or Ctrl-C) the server drains: /health and new
requests answer 503 while the listening socket stays open (a load balancer sees the 503 and moves on),
in-flight requests finish within --drain-seconds (the rest get a 503 error), then uvicorn shuts down and the
process exits 0. A second signal skips the wait.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from graphrun.envvars import switch_interval_seconds
from graphrun.errors import GraphrunError
from graphrun.llm.engine_config import DTYPES, GRAPH_BACKENDS, SERVE_MIXED_PREFILL_TOKENS, EngineConfig
from graphrun.serve.config import ServeConfig

if TYPE_CHECKING:  # uvicorn and FastAPI are the optional `serve` extra: imported when serving
    import uvicorn

    from graphrun.serve.worker import EngineWorker

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_SECONDS = 5  # uvicorn's own wait for connections, after the drain


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """Register `serve` and its flags (defaults from EngineConfig and ServeConfig)."""
    eng, srv = EngineConfig(), ServeConfig()
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (completions, chat, /metrics, /health)")
    p.add_argument(
        "--model", default=None, help="preset or HF folder (default: qwen3-0.6b-shape with CUDA, else tiny)"
    )
    p.add_argument("--host", default=srv.host)
    p.add_argument("--port", type=int, default=srv.port)
    p.add_argument("--served-model-name", default=None, help="the `model` clients send (default: --model)")
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
        "--mixed-prefill-tokens",
        type=int,
        default=SERVE_MIXED_PREFILL_TOKENS,
        help="prompt tokens a decode step may carry, so streams keep pace while prompts prefill "
        f"(default {SERVE_MIXED_PREFILL_TOKENS}, capped by the top capture size; 0: prefill and decode "
        "steps alternate)",
    )
    p.add_argument(
        "--no-async-scheduling",
        dest="async_scheduling",
        action="store_false",
        help="finish each step before scheduling the next (default: overlap host scheduling with the GPU)",
    )
    p.add_argument(
        "--graph-backend",
        default=eng.graph_backend,
        choices=GRAPH_BACKENDS,
        help="auto: CUDA graphs on a GPU, eager on a CPU; sim: the CPU graph simulator",
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


def _int_list(text: str) -> tuple[int, ...]:
    """ "1,2,4" -> (1, 2, 4), for argparse."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def run_serve(args: argparse.Namespace) -> int:
    """Build the configs from flags, start the engine and uvicorn; return when drained."""
    import torch  # imported on use: `graphrun --help` stays fast

    model = args.model or ("qwen3-0.6b-shape" if torch.cuda.is_available() else "tiny")
    try:
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
            mixed_prefill_tokens=args.mixed_prefill_tokens,
            graph_backend=args.graph_backend,
        )
        serve_config = ServeConfig(
            host=args.host,
            port=args.port,
            served_model_name=args.served_model_name or model,
            max_queue=args.max_queue,
            drain_seconds=args.drain_seconds,
            engine_process=args.engine_process,
        )
    except GraphrunError as exc:
        print(f"graphrun serve: {exc}", file=sys.stderr)
        return 2
    try:
        import fastapi  # noqa: F401  (only to fail early with the fix below)
        import uvicorn  # noqa: F401
    except ImportError as exc:
        hint = "pip install 'graphrun[serve]'"
        print(f"graphrun serve needs the `serve` extra ({exc}): {hint}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() and args.graph_backend != "sim":
        log.info("no CUDA device: decode runs eager")
    return serve(engine_config, serve_config)


def serve(engine_config: EngineConfig, serve_config: ServeConfig) -> int:
    """Serve until SIGTERM/SIGINT has drained the server; 1 when the engine failed (at start or later)."""
    import uvicorn

    from graphrun.serve.app import build_app
    from graphrun.serve.worker import make_worker

    interval = switch_interval_seconds()
    if interval is not None:
        sys.setswitchinterval(interval)
        log.info("thread switch interval: %g us", interval * 1e6)
    worker = make_worker(engine_config, serve_config)
    config = uvicorn.Config(
        build_app(worker, serve_config),
        host=serve_config.host,
        port=serve_config.port,
        log_config=None,  # logging is configured by graphrun's CLI; uvicorn's loggers propagate to it
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    draining_server(config, worker, serve_config.drain_seconds).run()
    return 1 if worker.state == "failed" else 0


def draining_server(config: uvicorn.Config, worker: EngineWorker, drain_seconds: float) -> uvicorn.Server:
    """A uvicorn.Server whose first SIGTERM/SIGINT drains `worker` before shutting down.

    uvicorn's own handler would stop listening at once and re-raise the signal after shutdown (exit
    status -15); this one keeps answering 503 during the drain and lets the process exit 0.
    """
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def __init__(self) -> None:
            super().__init__(config)
            self.drain_thread: threading.Thread | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.drain_thread is None:  # first signal: drain in a thread, then exit
                log.info("%s: draining (new requests get 503)", signal.Signals(sig).name)
                self.drain_thread = threading.Thread(target=self.drain, name="graphrun-drain", daemon=True)
                self.drain_thread.start()
            else:  # second signal: exit now
                self.should_exit = self.force_exit = True

        def drain(self) -> None:
            worker.drain(drain_seconds)
            self.should_exit = True

        async def on_tick(self, counter: int) -> bool:
            if worker.state == "failed":  # the engine could not start, or its process died
                self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer()
