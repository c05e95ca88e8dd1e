"""`--compile`, `--compile-cache-dir` and `--cuda-graph-mode` for `serve` and `generate` (graphs/compile.py
and llm/engine.py do the work)."""

from __future__ import annotations

import argparse

from graphrun.llm.engine_config import CUDA_GRAPH_MODES, EngineConfig, cuda_graph_mode_name


def add_compile_flags(parser: argparse.ArgumentParser) -> None:
    """Register the two compile flags on a subcommand."""
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile each graph's step before capturing it (AOTInductor, else torch.compile); start-up "
        "logs compile and capture seconds apart (a compile that fails or differs runs uncompiled, logged)",
    )
    parser.add_argument(
        "--compile-cache-dir",
        default=None,
        help="with --compile: a folder keeping the compiled artifacts per model, shapes, dtype, device and "
        "torch version, so a restart reuses them (weights are read from the model at every start)",
    )


def add_cuda_graph_mode_flag(parser: argparse.ArgumentParser) -> None:
    """Register --cuda-graph-mode on a subcommand (default from EngineConfig)."""
    parser.add_argument(
        "--cuda-graph-mode",
        type=cuda_graph_mode_name,
        default=EngineConfig().cuda_graph_mode,
        metavar="{" + ",".join(CUDA_GRAPH_MODES) + "}",
        help="full: decode (and one-prompt prefill) graphs, other steps eager; piecewise: every step runs "
        "the model body's graphs per token rung with attention eager between them; full_and_piecewise: "
        "FULL for decode, PIECEWISE for prefill batches, prompt chunks and mixed steps; none: eager "
        f"(default {EngineConfig().cuda_graph_mode}, the fastest measured)",
    )
