"""The one command line: `graphrun demo | generate | serve | doctor | bench | ladder`. Thin.

Logging handlers are configured here and nowhere else. Building the parser imports no torch (nor
FastAPI, matplotlib...): `graphrun --help` and a mistyped flag answer at once; each command imports what
it needs when it runs, after its flags have passed the checks of preflight.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from graphrun.errors import GraphrunError
from graphrun.generate_cli import add_generate_parser, run_generate
from graphrun.ladder_cli import add_ladder_parser, run_ladder
from graphrun.llm.engine_config import cuda_graph_mode_name
from graphrun.preflight import check_model, check_out_dir, check_port_free
from graphrun.refuse import refuse
from graphrun.serve.cli import add_serve_parser, run_serve


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags."""
    parser = argparse.ArgumentParser(
        prog="graphrun", description="CUDA-graph capture and replay for PyTorch."
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="eager vs graph on a small built-in model (the embedded default)")
    demo.add_argument(
        "--backend",
        default=None,
        choices=["cuda", "sim"],
        help="default: cuda when a GPU is visible, else sim (the demo shows graphs, simulated on a CPU)",
    )
    demo.add_argument("--calls", type=int, default=200, help="timed calls per mode")

    doctor = sub.add_parser("doctor", help="versions, a probe capture, launch cost eager vs in a graph")
    doctor.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    add_generate_parser(sub)
    add_serve_parser(sub)
    add_ladder_parser(sub)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    zoo = bench_sub.add_parser(
        "zoo", help="MLP, BERT-large-shaped encoder, ResNet-50-shaped net: eager vs graphs"
    )
    zoo.add_argument("--models", default="mlp,encoder,convnet", help="comma-separated subset")
    zoo.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    zoo.add_argument("--iters", type=int, default=200, help="timed calls per measurement")
    zoo.add_argument("--warmup", type=int, default=20, help="untimed calls before each measurement")
    zoo.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    zoo.add_argument("--ladder-max", type=int, default=64, help="top of the encoder ladder capture test")
    zoo.add_argument("--out", default="benchmarks/results", help="folder for the JSON and PNG")
    zoo.add_argument("--small", action="store_true", help="shrunken models (CPU smoke runs)")
    _add_decode_bench_parser(bench_sub)
    _add_serve_bench_parser(bench_sub)
    _add_infer_bench_parser(bench_sub)
    _add_pipeline_bench_parser(bench_sub)
    return parser


def _add_pipeline_bench_parser(bench_sub: argparse._SubParsersAction) -> None:
    """`graphrun bench pipeline`: the example policy's stages and act(), graphs vs eager, tier-aware."""
    pipe = bench_sub.add_parser(
        "pipeline", help="the example policy (prefix + expert stages): graphs vs eager, prefix forced eager"
    )
    pipe.add_argument("--iters", type=int, default=200, help="timed calls per stage and per act()")
    pipe.add_argument("--warmup", type=int, default=20, help="untimed calls before each measurement")
    pipe.add_argument("--steps", type=int, default=10, help="denoising steps per act()")
    pipe.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16", "float32"])
    pipe.add_argument("--out", default="benchmarks/results", help="folder for the JSON and PNG")
    pipe.add_argument("--small", action="store_true", help="the tiny policy (CPU smoke runs)")
    pipe.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "ort"],
        help="torch: GraphRunner stages; ort: both stages exported to ONNX and run on OrtRunner "
        "(graphrun[onnx]; CUDA graphs need onnxruntime-gpu; float16/float32 only)",
    )


def _add_decode_bench_parser(bench_sub: argparse._SubParsersAction) -> None:
    """`graphrun bench decode`: LLM decode steps, graph vs eager vs bandwidth floor (and HF peers)."""
    decode = bench_sub.add_parser(
        "decode", help="LLM decode step: graphs vs eager vs the bandwidth floor, optional HF peers"
    )
    decode.add_argument("--model", default="qwen3-0.6b-shape", help="preset name or HF checkpoint folder")
    decode.add_argument("--batch-sizes", default="1,4,16,64", help="comma-separated batch sizes")
    decode.add_argument("--context", type=int, default=512, help="prompt tokens per request")
    decode.add_argument("--new-tokens", type=int, default=128, help="tokens generated per request")
    decode.add_argument(
        "--steps", type=int, default=25, help="timed decode steps per mode, way and batch size"
    )
    decode.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    decode.add_argument("--peers", action="store_true", help="also time Hugging Face transformers")
    decode.add_argument(
        "--peer-batch-sizes", default=None, help="batch sizes for the peers (default: --batch-sizes)"
    )
    decode.add_argument(
        "--cuda-graph-mode",
        type=cuda_graph_mode_name,
        default="full",
        help="the graph path's engine mode (full, piecewise, full_and_piecewise, none); eager: the baseline",
    )
    decode.add_argument(
        "--profile",
        action="store_true",
        help="after the timed runs, profile the graphed step's kernels by class against their floors (CUDA)",
    )
    decode.add_argument(
        "--tp",
        type=int,
        nargs="+",
        default=[1],
        metavar="N",
        help="tensor-parallel sizes to compare on the same model and batch sizes (e.g. --tp 1 2): per size, "
        "N ranks on cuda:0..N-1 time the decode graph vs eager and the step's collectives, 4 x --steps "
        "calls each (default 1: the single-GPU engine bench)",
    )
    decode.add_argument("--out", default="benchmarks/results", help="folder for the JSON and PNG")


def _add_serve_bench_parser(bench_sub: argparse._SubParsersAction) -> None:
    """`graphrun bench serve`: the HTTP server under a closed-loop load, graphs vs enforce-eager."""
    serve = bench_sub.add_parser(
        "serve", help="the OpenAI server under load: throughput, TTFT and ITL, graphs vs eager"
    )
    serve.add_argument(
        "--model", default=None, help="preset or HF folder (default: qwen3-0.6b-shape with CUDA, else tiny)"
    )
    serve.add_argument(
        "--modes",
        default="graph,eager",
        help="comma-separated: graph (the server's default graphs, or --cuda-graph-mode), eager, and the "
        "cuda graph modes full, piecewise, full_and_piecewise (each a server with that --cuda-graph-mode)",
    )
    serve.add_argument(
        "--cuda-graph-mode",
        type=cuda_graph_mode_name,
        default=None,
        help="passed to the server of mode graph (default: the server's own, full)",
    )
    serve.add_argument("--num-requests", type=int, default=200, help="timed requests per mode")
    serve.add_argument("--concurrency", type=int, default=16, help="requests in flight (closed loop)")
    serve.add_argument("--prompt-len-median", type=int, default=256, help="log-normal median, tokens")
    serve.add_argument("--prompt-len-max", type=int, default=1024)
    serve.add_argument("--output-len-median", type=int, default=128, help="log-normal median, tokens")
    serve.add_argument("--output-len-max", type=int, default=512)
    serve.add_argument("--min-len", type=int, default=4, help="shortest prompt and output")
    serve.add_argument(
        "--shared-prefix-len",
        type=int,
        default=0,
        help="tokens every prompt starts with (a shared system prompt: compare the server with "
        "--server-arg=--no-enable-prefix-caching)",
    )
    serve.add_argument(
        "--response-format",
        default="none",
        choices=("none", "json-schema"),
        help="json-schema: every request carries a small JSON schema (structured output; compare with none)",
    )
    serve.add_argument(
        "--faults",
        default=None,
        metavar="replay=RATE,kill=FRACTION",
        help="after each mode's run, fault drills on the same workload (bench/serve_faults.py): replay=RATE "
        "serves with that fraction of graph replays failing (0 failed requests, the same outputs), "
        "kill=FRACTION kills the engine process once that fraction of requests is done",
    )
    serve.add_argument("--seed", type=int, default=0, help="lengths and prompt ids")
    serve.add_argument("--warmup-requests", type=int, default=8, help="untimed, not counted")
    serve.add_argument("--max-num-seqs", type=int, default=None, help="passed to the server")
    serve.add_argument("--port", type=int, default=0, help="0: a free port")
    serve.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to a healthy server")
    serve.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request")
    serve.add_argument(
        "--client-processes",
        type=int,
        default=None,
        help="client processes sharing the streams (default: 1 per 4 streams, at most a quarter of the CPUs)",
    )
    serve.add_argument(
        "--http-client",
        default="raw",
        choices=("raw", "httpx", "aiohttp"),
        help="how the client reads the streams: raw (HTTP/1.1 on asyncio streams, the default), httpx or "
        "aiohttp",
    )
    serve.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra `graphrun serve` flags, repeatable: --server-arg=--max-model-len=2048",
    )
    serve.add_argument("--out", default="benchmarks/results", help="folder for the JSON, PNG and logs")


def _add_infer_bench_parser(bench_sub: argparse._SubParsersAction) -> None:
    """`graphrun bench infer`: POST /v1/infer under a closed-loop load, graph vs eager, batching on vs off."""
    infer = bench_sub.add_parser(
        "infer", help="the tensor endpoint (/v1/infer) under load: graphs vs eager, batching on vs off"
    )
    infer.add_argument(
        "--model",
        default=None,
        help="a factory of graphrun.bench.infer_models (mlp, mlp_small, encoder, encoder_small) or "
        "pkg.mod:factory (default: mlp with CUDA, else mlp_small)",
    )
    infer.add_argument("--modes", default="graph,eager", help="comma-separated: graph, eager")
    infer.add_argument(
        "--batching",
        default="on,off",
        help="comma-separated: on (the server's dynamic batching), off (--max-batch-requests 1)",
    )
    infer.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts (closed loop)")
    infer.add_argument("--num-requests", type=int, default=2000, help="timed requests per concurrency")
    infer.add_argument("--warmup-requests", type=int, default=64, help="untimed, per concurrency")
    infer.add_argument("--rows", type=int, default=1, help="rows (dim 0) in every request")
    infer.add_argument("--encoding", default="npy", choices=("npy", "json"), help="how tensors travel")
    infer.add_argument("--seed", type=int, default=0, help="the inputs' seed")
    infer.add_argument("--cuda-graph-max-bs", type=int, default=32, help="the server's top rung")
    infer.add_argument(
        "--batch-wait-ms", type=float, default=None, help="passed to the server (default: the server's own)"
    )
    infer.add_argument("--port", type=int, default=0, help="0: a free port")
    infer.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to a healthy server")
    infer.add_argument("--request-timeout", type=float, default=60.0, help="seconds per request")
    infer.add_argument(
        "--client-processes",
        type=int,
        default=None,
        help="load client processes sharing each concurrency's workers, each its own event loop and httpx "
        "client (default: 1 per 4 workers, at most the CPUs less 2, which the server keeps)",
    )
    infer.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra `graphrun serve` flags, repeatable: --server-arg=--no-engine-process",
    )
    infer.add_argument("--out", default="benchmarks/results", help="folder for the JSON, PNG and logs")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `graphrun` console script and `python -m graphrun`."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # httpx logs every request at INFO: thousands in `bench serve`
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "demo":
        from graphrun.demo import run_demo

        return run_demo(backend=args.backend, calls=args.calls)
    if args.command == "generate":
        return run_generate(args)
    if args.command == "serve":
        return run_serve(args)
    if args.command == "doctor":
        from graphrun.doctor import run_doctor

        return run_doctor(as_json=args.json)
    if args.command == "bench":
        return _run_bench(args)
    if args.command == "ladder":
        return run_ladder(args)
    return 2


def _run_bench(args: argparse.Namespace) -> int:
    """Check the bench's paths, model and port before anything loads (exit 2 on a problem), then run it."""
    try:
        check_out_dir(Path(args.out))
        if args.bench_command != "infer" and getattr(args, "model", None) is not None:
            check_model(args.model)
        if getattr(args, "port", 0):
            check_port_free("127.0.0.1", args.port)
    except GraphrunError as exc:
        return refuse(f"bench {args.bench_command}", exc)
    if args.bench_command == "zoo":
        from graphrun.bench.zoo import run_zoo

        return run_zoo(args)
    if args.bench_command == "decode":
        return _run_decode_bench(args)
    if args.bench_command == "infer":
        from graphrun.bench.infer import run_bench_infer

        return run_bench_infer(args)
    if args.bench_command == "pipeline":
        from graphrun.bench.pipeline import run_bench_pipeline

        return run_bench_pipeline(args)
    from graphrun.bench.serve import run_bench_serve

    return run_bench_serve(args)


def _run_decode_bench(args: argparse.Namespace) -> int:
    """`graphrun bench decode`: settings refused (exit 2) before anything loads, else the bench's status."""
    from graphrun.bench.decode import run_decode
    from graphrun.bench.decode_setup import DecodeSetup

    try:
        setup = DecodeSetup.from_args(args)
    except GraphrunError as exc:
        return refuse("bench decode", exc)
    if setup.tp_mode:
        from graphrun.bench.decode_tp_run import run_decode_tp

        return run_decode_tp(setup)
    return run_decode(setup)


if __name__ == "__main__":
    sys.exit(main())
