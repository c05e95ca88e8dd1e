"""graphrun.ort: ONNX models behind GraphRunner's call API, on ONNX Runtime (the `onnx` extra).

`OrtRunner` (runner.py) runs an .onnx file per rung of a batch-size ladder with one CUDA graph per rung
on ORT's CUDA execution provider, and runs eager, saying why, where it has none; `export_onnx`
(export.py) writes a torch module to .onnx with a dynamic batch dim. Names load on first use, so
`graphrun.ort.export_onnx` needs no onnxruntime and `OrtRunner` no onnxscript.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graphrun.ort.export import export_onnx
    from graphrun.ort.options import OrtBackend, OrtOptions
    from graphrun.ort.runner import OrtRunner

_LAZY = {
    "OrtRunner": "graphrun.ort.runner",
    "OrtOptions": "graphrun.ort.options",
    "OrtBackend": "graphrun.ort.options",
    "export_onnx": "graphrun.ort.export",
}

__all__ = ["OrtBackend", "OrtOptions", "OrtRunner", "export_onnx"]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graphrun.ort' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
