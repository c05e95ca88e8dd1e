"""The one place graphrun reads environment variables; every one is prefixed GRAPHRUN_ and listed here.

- GRAPHRUN_GIT_COMMIT: the commit to record in benchmark results when the tree has no .git (a copy of
  the working tree on a GPU machine); scripts/gpu-check's caller sets it.
"""

from __future__ import annotations

import os


def git_commit_override() -> str | None:
    """GRAPHRUN_GIT_COMMIT, or None when unset or empty."""
    value = os.environ.get("GRAPHRUN_GIT_COMMIT", "").strip()
    return value or None
