"""Every third-party module that src/graphrun imports is a declared dependency, where its code runs.

An import in a file outside serve/, bench/ and the Triton kernels runs on `import graphrun`,
`graphrun generate` or `graphrun doctor`, so its distribution must be a core dependency. serve/ may also
use the `serve` extra, bench/ the `bench` extra (which includes `serve`), ort/ and
serve/infer/onnx_calls.py the `onnx` extra, and the Triton kernel files of llm/kernels/ (triton_ops.py,
gemv.py, logprobs*.py, sampling*.py, pdl.py) the `kernels` extra.
An import inside `try: ... except ImportError` is optional (the code falls back and says so): it only has
to be declared in some extra.
scripts/check-wheel proves the same on a real install.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "graphrun"
# first folder under graphrun/ -> its extra
EXTRA_OF_FOLDER = {"serve": "serve", "bench": "bench", "ort": "onnx"}
EXTRA_OF_FILE = {
    "llm/kernels/triton_ops.py": "kernels",
    "llm/kernels/gemv.py": "kernels",
    "llm/kernels/logprobs.py": "kernels",
    "llm/kernels/sampling.py": "kernels",
    "llm/kernels/sampling_keys.py": "kernels",
    "llm/kernels/sampling_passes.py": "kernels",
    "llm/kernels/pdl.py": "kernels",  # imported only by the Triton kernel files above
    "serve/infer/onnx_calls.py": "onnx",  # loaded only for `serve --onnx`, after the CLI checked the extra
}


@dataclass(frozen=True, slots=True)
class Import:
    """One third-party import: the file (relative to graphrun/), its line, module and distribution."""

    file: str
    line: int
    module: str
    distribution: str
    optional: bool  # inside `try: ... except ImportError`


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str], extras: Mapping[str, list[str]]) -> set[str]:
    """The distribution names a list of requirements brings, `graphrun[x,y]` expanded to those extras."""
    names: set[str] = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", requirement)
        assert match, requirement
        name, wanted = _normalize(match[1]), match[2]
        if name == "graphrun":
            for extra in (wanted or "").split(","):
                names |= _names(extras[extra.strip()], extras)
        else:
            names.add(name)
    return names


def declared(project: Mapping[str, Any]) -> dict[str, set[str]]:
    """'core' and each extra -> the distribution names it brings (core not repeated in the extras)."""
    extras = project.get("optional-dependencies", {})
    result = {"core": _names(project["dependencies"], extras)}
    for extra in extras:
        result[extra] = _names(extras[extra], extras)
    return result


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()  # scans every installed distribution: once


def _distribution(module: str) -> str:
    """The distribution that installs a top-level module; the module's name when it is not installed."""
    found = _distributions().get(module)
    return _normalize(found[0] if found else module)


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        caught = handler.type
        names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
        if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
            return True
    return False


def _modules(tree: ast.AST, optional: bool = False) -> Iterator[tuple[int, str, bool]]:
    """(line, top-level module, optional) for every absolute import, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name.split(".")[0], optional) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0], optional
        elif isinstance(node, ast.Try) and _catches_import_error(node):
            for child in node.body:
                yield from _modules(ast.Module(body=[child], type_ignores=[]), True)
            for part in (*node.handlers, *node.orelse, *node.finalbody):
                yield from _modules(part, optional)
        else:
            yield from _modules(node, optional)


def third_party_imports() -> list[Import]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for line, module, optional in _modules(ast.parse(path.read_text(), rel)):
            if module not in sys.stdlib_module_names and module != "graphrun":
                found.append(Import(rel, line, module, _distribution(module), optional))
    return found


def allowed(file: str, optional: bool, groups: Mapping[str, set[str]]) -> set[str]:
    """The distributions an import in `file` may come from."""
    if optional:  # any runtime extra: `test` alone does not count
        return set().union(*(names for group, names in groups.items() if group != "test"))
    extra = EXTRA_OF_FILE.get(file) or EXTRA_OF_FOLDER.get(file.split("/")[0])
    return groups["core"] | (groups[extra] if extra else set())


def violations(imports: list[Import], groups: Mapping[str, set[str]]) -> list[str]:
    return [
        f"{i.file}:{i.line} imports {i.module} ({i.distribution}), not declared where this file runs"
        for i in imports
        if i.distribution not in allowed(i.file, i.optional, groups)
    ]


def test_every_runtime_import_is_declared_where_its_code_runs() -> None:
    groups = declared(_pyproject()["project"])
    imports = third_party_imports()
    assert {"torch", "numpy", "fastapi", "triton"} <= {i.module for i in imports}  # the scan sees them
    assert violations(imports, groups) == []


def test_an_undeclared_import_is_reported() -> None:
    project = _pyproject()["project"]
    without_numpy = {**project, "dependencies": [r for r in project["dependencies"] if "numpy" not in r]}
    found = violations(third_party_imports(), declared(without_numpy))
    assert any(v.startswith("llm/step_packing.py:") and "numpy" in v for v in found)


def test_a_serve_import_outside_serve_needs_a_core_dependency() -> None:
    groups = declared(_pyproject()["project"])
    assert violations([Import("llm/api.py", 1, "fastapi", "fastapi", optional=False)], groups) != []
    assert violations([Import("serve/app.py", 1, "fastapi", "fastapi", optional=False)], groups) == []
    assert violations([Import("llm/api.py", 1, "fastapi", "fastapi", optional=True)], groups) == []


def test_optional_imports_only_need_some_runtime_extra() -> None:
    optional = {i.module for i in third_party_imports() if i.optional}
    assert "triton" in optional  # llm/kernels/__init__.py falls back to torch ops without it


def test_license_and_type_marker_ship() -> None:
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX string, not the deprecated table
    license_text = (ROOT / project["license-files"][0]).read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text  # the full text, not a stub
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["graphrun"]
