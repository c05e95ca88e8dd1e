"""`graphrun serve` in a subprocess for the CLI tests of /v1/infer and /act: a server started on a free port
and waited for until /health answers 200, or a command line refused (exit 2, one line on stderr).

`here`, the calling test's folder, goes on the child's PYTHONPATH so that it imports the test's models.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from graphrun.bench.serve_process import free_port

PATIENCE = 180.0  # the bound on each wait for the child: start-up, exit, a refusal


def serve_env(here: Path) -> dict[str, str]:
    """This process's environment with `here` first on PYTHONPATH."""
    paths = [str(here), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def serve_cli(*args: str, log: Path, here: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`graphrun serve *args` on a free port, its output in `log`; the process and its URL once healthy."""
    port = free_port()
    command = [sys.executable, "-m", "graphrun", "serve", *args, "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=serve_env(here))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the server did not start:\n{log.read_text()}")


def refused(*args: str, here: Path) -> str:
    """The stderr of `graphrun serve *args`, which must exit 2."""
    command = [sys.executable, "-m", "graphrun", "serve", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=serve_env(here), timeout=PATIENCE)
    assert done.returncode == 2, done.stderr
    return done.stderr.strip()
