"""`--tensor-parallel-size` (`-tp`) for `serve` and `generate` (llm/parallel/ does the work)."""

from __future__ import annotations

import argparse

from graphrun.llm.engine_config import EngineConfig


def add_tensor_parallel_flag(parser: argparse.ArgumentParser) -> None:
    """Register -tp on a subcommand (default from EngineConfig)."""
    parser.add_argument(
        "-tp",
        "--tensor-parallel-size",
        type=int,
        default=EngineConfig().tensor_parallel_size,
        help="split every layer across this many ranks, one process per GPU (gloo processes on the CPU); "
        "the model's heads, KV heads and MLP rows must divide by it (default 1: one process)",
    )
