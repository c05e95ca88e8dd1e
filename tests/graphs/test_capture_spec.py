"""The capture machinery as a unit of its own: it takes a CaptureSpec, needs no runner, imports none."""

import ast
from pathlib import Path

import pytest
import torch

import graphrun.graphs
from graphrun.graphs.backends import SimBackend
from graphrun.graphs.capture import RungCapturer
from graphrun.graphs.inputs import InputLayout
from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.spec import CaptureSpec
from graphrun.graphs.status import CaptureFailure

GRAPHS = Path(graphrun.graphs.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every graphrun.graphs module `path` imports, TYPE_CHECKING blocks and function bodies included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("graphrun.graphs.")}


def _module(path: Path) -> str:
    parts = path.relative_to(GRAPHS.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("name", ["capture", "verify", "spec", "inputs", "outputs", "options"])
def test_the_capture_machinery_does_not_import_the_runner(name):
    assert "graphrun.graphs.runner" not in _imports(GRAPHS / f"{name}.py")


def test_graphs_has_no_import_circle():
    modules = {_module(p): p for p in GRAPHS.rglob("*.py")}
    edges = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(m: str) -> None:
        assert m not in visiting, f"import circle: {' -> '.join([*visiting[visiting.index(m) :], m])}"
        if m in done:
            return
        visiting.append(m)
        for target in sorted(edges[m]):
            visit(target)
        visiting.pop()
        done.add(m)

    assert "graphrun.graphs.capture" in modules  # the walk sees the package, not an empty folder
    for m in sorted(modules):
        visit(m)


def _spec(fn, example, **options) -> CaptureSpec:
    opts = RunnerOptions(backend="sim", **options)
    inputs = InputLayout.build((example,), {}, opts)
    return CaptureSpec(fn, inputs, opts, SimBackend(), "segment")


def test_a_spec_is_captured_and_replayed_without_a_runner():
    weight = torch.randn(4, 3)

    def fn(x):
        return torch.tanh(x @ weight)

    spec = _spec(fn, torch.randn(2, 4), sizes=(1, 2, 4))
    result = RungCapturer(spec).capture_all()
    assert sorted(result.graphs) == [1, 2, 4]
    assert all(s.captured and s.padded for s in result.statuses.values())
    assert result.num_captured == 3 and result.failures() == {}
    x = torch.randn(3, 4)
    spec.inputs.copy_in((x,), 3, 4)  # 3 rows padded up to rung 4, as a call pads them
    result.graphs[4].replay()
    assert result.outputs is not None
    (out,) = result.outputs.sliced_outputs(4, 3)
    torch.testing.assert_close(out, fn(x))


def test_a_capture_result_reports_failures_by_reason():
    def coupled(x):
        return x - x.mean(0)  # rows depend on each other: padding changes the answer

    spec = _spec(coupled, torch.randn(4, 2), sizes=(2, 4))
    result = RungCapturer(spec).capture_all()
    assert sorted(result.graphs) == [2, 4]  # both captured
    # one row padded to 2 by repeating it has mean == the row, as eager at 1 row; 3 rows padded to 4 do not
    assert result.failures() == {CaptureFailure.PADDING_MISMATCH: 1}
    assert [result.statuses[r].padded for r in (2, 4)] == [True, False]
