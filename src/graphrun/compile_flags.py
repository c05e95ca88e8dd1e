"""`--compile` and `--compile-cache-dir` for `serve` and `generate` (graphs/compile.py does the work)."""

from __future__ import annotations

import argparse


def add_compile_flags(parser: argparse.ArgumentParser) -> None:
    """Register the two compile flags on a subcommand."""
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile each graph's step with torch.compile (inductor) before capturing it; start-up logs "
        "compile and capture seconds apart (a compile that fails or differs runs uncompiled, logged)",
    )
    parser.add_argument(
        "--compile-cache-dir",
        default=None,
        help="with --compile: a folder keeping the compiled artifacts per model, shapes, dtype, device and "
        "torch version, so a restart reuses them",
    )
