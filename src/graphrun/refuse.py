"""How a graphrun command refuses to start: one line on stderr that names the command and says why, and
exit status 2 (a bad flag, a missing extra, a busy port), before any work is done."""

from __future__ import annotations

import sys

REFUSED = 2  # the exit status of a refused command line, as argparse's own


def refuse(command: str, problem: object) -> int:
    """Print `graphrun COMMAND: error: PROBLEM` on stderr; return REFUSED for the caller to exit with."""
    print(f"graphrun {command}: error: {problem}", file=sys.stderr)
    return REFUSED
