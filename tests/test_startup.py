"""The package and the CLI load lazily: help and argument errors import no torch; public names resolve.

Each check runs in a fresh interpreter, since this test process has torch loaded already. No timing is
asserted (benchmarks/cli_startup.py measures it): what is asserted is what makes it fast.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import graphrun
from graphrun.errors import GraphrunError

HEAVY = ("torch", "fastapi", "uvicorn", "matplotlib", "numpy", "tokenizers", "prometheus_client")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _loaded_after(argv: list[str]) -> tuple[int, set[str], str]:
    """Run graphrun.cli.main(argv) in a fresh interpreter: (exit status, heavy modules loaded, stderr)."""
    done = _run(
        f"""
        import sys
        from graphrun.cli import main
        try:
            status = main({argv!r})
        except SystemExit as exc:
            status = exc.code
        heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
        print(status, ",".join(heavy), file=sys.stderr)
        """
    )
    status, _, heavy = done.stderr.strip().splitlines()[-1].partition(" ")
    return int(status), set(filter(None, heavy.split(","))), done.stderr


def test_importing_graphrun_and_its_cli_loads_no_torch():
    done = _run(
        f"""
        import sys
        import graphrun, graphrun.cli
        graphrun.cli.build_parser()
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["serve", "--help"], ["generate", "--help"], ["bench", "serve", "--help"]],
)
def test_help_loads_nothing_heavy(argv):
    status, heavy, _ = _loaded_after(argv)
    assert status == 0
    assert heavy == set()


@pytest.mark.parametrize(
    "argv",
    [["serve", "--port", "eighty"], ["serve", "--graph-backend", "gpu"], ["generate", "--bogus"], ["nope"]],
)
def test_argument_errors_load_nothing_heavy(argv):
    status, heavy, stderr = _loaded_after(argv)
    assert status == 2
    assert "error:" in stderr
    assert heavy == set()


def test_a_public_name_loads_its_module_on_first_use():
    done = _run(
        """
        import sys
        import graphrun
        assert "torch" not in sys.modules
        runner_class = graphrun.GraphRunner
        assert "torch" in sys.modules and runner_class.__module__ == "graphrun.graphs.runner"
        """
    )
    assert done.returncode == 0, done.stderr


def test_offline_api_is_importable_from_the_package():
    from graphrun import LLM, SamplingParams
    from graphrun.llm.api import LLM as api_llm
    from graphrun.llm.sampling_params import SamplingParams as api_params

    assert LLM is api_llm and SamplingParams is api_params


def test_every_name_in_all_resolves_and_dir_lists_it():
    for name in graphrun.__all__:
        assert getattr(graphrun, name) is not None, name
    assert set(graphrun.__all__) <= set(dir(graphrun))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = graphrun.Nope  # type: ignore[attr-defined]


def _all_graphrun_error_classes() -> set[type[GraphrunError]]:
    """Every GraphrunError subclass defined in any graphrun module (each module imported first)."""
    for info in pkgutil.walk_packages(graphrun.__path__, "graphrun."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:  # an optional dependency (triton) missing: its module defines no errors
            continue
    found: set[type[GraphrunError]] = set()
    pending = [GraphrunError]
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("graphrun.") and cls not in found:
            found.add(cls)
            pending.extend(cls.__subclasses__())
    return found


def test_every_graphrun_exception_is_importable_from_the_package():
    classes = _all_graphrun_error_classes()
    assert graphrun.BackendUnavailableError in classes  # the one the issue found missing
    missing = sorted(cls.__name__ for cls in classes if getattr(graphrun, cls.__name__, None) is not cls)
    assert missing == []
    assert {cls.__name__ for cls in classes} <= set(graphrun.__all__)
