"""`graphrun serve --module pkg.mod:factory | --exported model.pt2 | --onnx model.onnx`: tensor model flags.

serve/cli.py registers these beside the LLM's and hands a run with either source here, with the
ServeConfig it built from the shared flags (host, port, queue, keys, body limit, drain). The graph flags
are the LLM server's (--graph-backend, --enforce-eager, --cuda-graph-sizes, --cuda-graph-max-bs); the
LLM-only ones (--model, --max-num-seqs, ...) do not apply. Checked before torch loads, like the rest.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

from graphrun.errors import ConfigError
from graphrun.serve.config import ServeConfig
from graphrun.serve.flag_checks import run_checked
from graphrun.serve.infer.config import DEFAULT_MAX_BATCH_SIZE, InferConfig

log = logging.getLogger(__name__)


def add_infer_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `graphrun serve` for a tensor model (defaults from InferConfig)."""
    cfg = InferConfig(module="x:y")
    group = p.add_argument_group("serving any model (POST /v1/infer)")
    group.add_argument(
        "--module",
        metavar="PKG.MOD:FACTORY",
        default=None,
        help="serve the model factory() returns (a ModelSource, or a module and example inputs), not an LLM",
    )
    group.add_argument(
        "--exported", type=Path, default=None, metavar="PATH", help="serve a torch.export archive (.pt2)"
    )
    group.add_argument(
        "--onnx",
        type=Path,
        default=None,
        metavar="PATH",
        help="serve an ONNX model on ONNX Runtime (graphrun[onnx]): CUDA graphs per rung where onnxruntime "
        "has the CUDA execution provider, else eager (said at start-up, and in /health and /v1/models)",
    )
    group.add_argument(
        "--dim-rungs",
        action="append",
        default=[],
        metavar="INPUT:AXIS=R1,R2,..",
        help="the rungs of an --exported program's dynamic axis besides the batch, e.g. "
        "input_ids:1=16,32,64,128 (repeatable; default: powers of two up to the export's max)",
    )
    group.add_argument(
        "--mask-input",
        default=None,
        metavar="NAME",
        help="the --exported program's input marking real positions (1) and padding (0) along its dims",
    )
    group.add_argument(
        "--device",
        default=cfg.device,
        help="where an --exported program or --onnx model runs (auto: CUDA when present; for --onnx, "
        "also when onnxruntime has the CUDA execution provider)",
    )
    group.add_argument(
        "--batch-wait-ms",
        type=float,
        default=cfg.max_wait_ms,
        help="how long a request waits for others to share its model call "
        f"(default {cfg.max_wait_ms}; 0: no wait)",
    )
    group.add_argument(
        "--max-batch-requests",
        type=int,
        default=cfg.max_batch_requests,
        metavar="N",
        help="the most requests one model call coalesces (default: as many as fit the top rung; "
        "1: batching off, one request per call)",
    )
    group.add_argument(
        "--max-request-rows",
        type=int,
        default=cfg.max_rows,
        help=f"rows (dim 0) one /v1/infer request may carry, 400 above (default {cfg.max_rows})",
    )


def wants_infer(args: argparse.Namespace) -> bool:
    return args.module is not None or args.exported is not None or args.onnx is not None


def infer_config(args: argparse.Namespace) -> InferConfig:
    """The tensor model's settings from the flags (validated by the dataclass and here, without torch)."""
    if args.model is not None:
        raise ConfigError(
            "--model serves an LLM; --module/--exported/--onnx a tensor model: pass one of them"
        )
    for flag, path in (("--exported", args.exported), ("--onnx", args.onnx)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    if args.onnx is not None:
        check_onnx_extra()
    return InferConfig(
        module=args.module,
        exported=args.exported,
        device=args.device,
        graph_backend=args.graph_backend,
        enforce_eager=args.enforce_eager,
        cuda_graph_sizes=args.cuda_graph_sizes,
        cuda_graph_max_bs=args.cuda_graph_max_bs or DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms=args.batch_wait_ms,
        max_batch_requests=args.max_batch_requests,
        max_rows=args.max_request_rows,
        dim_rungs=tuple(_dim_rungs(value) for value in args.dim_rungs),
        mask_input=args.mask_input,
        onnx=args.onnx,
    )


def check_onnx_extra() -> None:
    """--onnx needs onnxruntime and onnx (the `onnx` extra); found without importing them."""
    missing = [name for name in ("onnxruntime", "onnx") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"--onnx needs the `onnx` extra ({', '.join(missing)} not installed): "
            "pip install 'graphrun[onnx]' (with onnxruntime-gpu in place of onnxruntime for CUDA graphs)"
        )


def _dim_rungs(value: str) -> tuple[str, int, tuple[int, ...]]:
    """`input_ids:1=16,32,64` -> ("input_ids", 1, (16, 32, 64))."""
    where, _, rungs = value.partition("=")
    name, _, axis = where.rpartition(":")
    try:
        return name, int(axis), tuple(int(r) for r in rungs.split(","))
    except ValueError:
        raise ConfigError(
            f"--dim-rungs takes INPUT:AXIS=R1,R2,.. (e.g. input_ids:1=16,32,64), got {value!r}"
        ) from None


def run_infer(args: argparse.Namespace, serve_config: ServeConfig) -> int:
    """Check the flags (a problem: one line on stderr, exit 2), then serve the tensor model."""
    return run_checked(args, serve_config, infer_config, _default_name, serve_infer)


def _default_name(config: InferConfig) -> str:
    """The factory's name, or the file's name without .pt2 / .onnx."""
    path = config.exported or config.onnx
    if path is not None:
        return path.stem
    return (config.module or "model").rpartition(":")[2] or "model"


def serve_infer(config: InferConfig, serve_config: ServeConfig) -> int:
    """Serve until SIGTERM/SIGINT has drained the server; 1 when the model failed (at start or later)."""
    from graphrun.serve.auth import log_access_policy
    from graphrun.serve.draining import serve_until_drained
    from graphrun.serve.infer.app import build_infer_app
    from graphrun.serve.infer.model import infer_client

    log_access_policy(serve_config)
    client = infer_client(config, serve_config)
    return serve_until_drained(build_infer_app(client, serve_config), client, serve_config)
