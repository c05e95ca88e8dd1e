"""The engine host knows no served model: importing every module of serve/host/ loads nothing of the LLM
(graphrun.llm, serve/llm_*.py) nor of the tensor model (serve/infer/) nor of a policy (serve/act/,
graphrun.pipeline), directly or through another module."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import graphrun.serve.host

HOST = Path(graphrun.serve.host.__file__).parent
MODEL_PACKAGES = ("graphrun.llm", "graphrun.serve.infer", "graphrun.serve.llm_", "graphrun.serve.act",
                  "graphrun.pipeline")  # fmt: skip
LOAD_ALL = """
import json, pkgutil, sys
import graphrun.serve.host as host
for module in pkgutil.iter_modules(host.__path__):
    __import__(f"graphrun.serve.host.{module.name}")
print(json.dumps(sorted(name for name in sys.modules if name.startswith("graphrun"))))
"""


def _model_modules(names: list[str]) -> list[str]:
    return [name for name in names if name.startswith(MODEL_PACKAGES)]


def test_importing_the_host_loads_no_served_model_module():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", LOAD_ALL], capture_output=True, text=True, env=env, check=True
    )
    loaded = json.loads(out.stdout.splitlines()[-1])
    assert "graphrun.serve.host.client" in loaded and "graphrun.serve.host.transport" in loaded
    assert _model_modules(loaded) == []


def test_no_host_module_names_a_served_model_module_even_for_typing():
    named: list[str] = []
    for path in sorted(HOST.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                named += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                named += [alias.name for alias in node.names]
    assert any(name.startswith("graphrun.serve.host.") for name in named)  # the scan sees the imports
    assert _model_modules(named) == []


def test_the_check_catches_a_model_module():
    assert _model_modules(["graphrun.serve.metrics", "graphrun.llm.tokenizer", "graphrun.serve.infer"]) == [
        "graphrun.llm.tokenizer",
        "graphrun.serve.infer",
    ]
    assert _model_modules(["graphrun.serve.llm_messages.Submit"]) == ["graphrun.serve.llm_messages.Submit"]
    assert _model_modules(["graphrun.serve.act.model", "graphrun.pipeline.rows"]) == [
        "graphrun.serve.act.model",
        "graphrun.pipeline.rows",
    ]
