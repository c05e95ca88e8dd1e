"""The one place graphrun reads environment variables; every one is prefixed GRAPHRUN_ and listed here.

- GRAPHRUN_GIT_COMMIT: the commit to record in benchmark results, over what .git says (a copy of
  the working tree on a GPU machine); scripts/gpu-check's caller sets it.
- GRAPHRUN_DISABLE_TRITON: any non-empty value other than "0" makes the LLM layers use their torch
  reference ops on CUDA too (to compare, or to work around a kernel problem).
- GRAPHRUN_DISABLE_SKINNY_GEMM: the same for the decode-sized LM head alone: cuBLAS instead of
  skinny_logits (kernels/triton_ops.py), the other fused kernels kept.
- GRAPHRUN_SERVE_TRACE: a file path, used when `graphrun serve` gets no --trace-file: the server records
  a timeline of its engine steps and writes it there as JSON when it stops (serve/trace.py).
- GRAPHRUN_API_KEY: the API key(s) `graphrun serve` requires (`Authorization: Bearer <key>`), used when
  no --api-key flag is given. Several keys are separated by commas ("key-a,key-b"; blanks around them
  are dropped), so a key cannot contain a comma. Prefer it to the flag: a command line is visible to
  every user of the machine (ps), an environment is not.
"""

from __future__ import annotations

import os
from pathlib import Path


def _read(name: str) -> str:
    """The variable's value without surrounding whitespace; "" when unset."""
    return os.environ.get(name, "").strip()


def git_commit_override() -> str | None:
    """GRAPHRUN_GIT_COMMIT, or None when unset or empty."""
    value = _read("GRAPHRUN_GIT_COMMIT")
    return value or None


def triton_disabled() -> bool:
    """True when GRAPHRUN_DISABLE_TRITON asks for the torch reference ops."""
    return _read("GRAPHRUN_DISABLE_TRITON") not in ("", "0")


def skinny_gemm_disabled() -> bool:
    """True when GRAPHRUN_DISABLE_SKINNY_GEMM asks for cuBLAS on the decode-sized LM head."""
    return _read("GRAPHRUN_DISABLE_SKINNY_GEMM") not in ("", "0")


def serve_trace_path() -> Path | None:
    """GRAPHRUN_SERVE_TRACE as a path, or None when unset or empty."""
    value = _read("GRAPHRUN_SERVE_TRACE")
    return Path(value) if value else None


def api_keys() -> tuple[str, ...]:
    """GRAPHRUN_API_KEY split at commas, blank parts dropped; () when unset or empty."""
    return tuple(part.strip() for part in _read("GRAPHRUN_API_KEY").split(",") if part.strip())
