"""Importing the engine loads no Triton: a CPU-only process should not pay for it (nor print its
nanobind leak report at exit); nor llguidance, which only structured-output requests need."""

import subprocess
import sys


def test_importing_the_engine_and_server_loads_no_triton():
    code = "import sys, graphrun.llm.engine, graphrun.serve.app; print('triton' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
    assert "nanobind" not in done.stderr


def test_importing_the_engine_and_server_loads_no_grammar_library():
    code = "import sys, graphrun, graphrun.llm.engine, graphrun.serve.app; print('llguidance' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
