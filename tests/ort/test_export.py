"""export_onnx: a torch module to .onnx with a dynamic batch dim, read back by onnxruntime.

Tolerance: float32, ORT's CPU kernels vs torch's, rtol 1e-5 and atol 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from ort_models import two_inputs_example

from graphrun.errors import ConfigError
from graphrun.ort import export_onnx


def test_every_input_and_output_has_a_symbolic_batch_dim(two_inputs_model) -> None:
    _, path = two_inputs_model
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(a.name, a.shape) for a in session.get_inputs()] == [("x", ["batch", 8]), ("ids", ["batch", 3])]
    assert [(a.name, a.shape) for a in session.get_outputs()] == [
        ("mixed", ["batch", 4]),
        ("doubled", ["batch", 8]),
    ]


def test_the_exported_model_equals_the_module_at_another_batch_size(two_inputs_model) -> None:
    module, path = two_inputs_model
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, ids = two_inputs_example(7)  # exported at batch 4
    mixed, doubled = session.run(None, {"x": x.numpy(), "ids": ids.numpy()})
    with torch.no_grad():
        want_mixed, want_doubled = module(x, ids)
    torch.testing.assert_close(torch.from_numpy(mixed), want_mixed, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(doubled), want_doubled)


def test_weights_are_stored_in_the_one_file(two_inputs_model) -> None:
    _, path = two_inputs_model
    assert sorted(p.name for p in path.parent.iterdir()) == ["two_inputs.onnx"]


def test_a_batch_of_one_is_refused_before_exporting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="use >= 2"):
        export_onnx(torch.nn.Linear(3, 2), torch.randn(1, 3), tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="1 input_names for 2 example tensors"):
        export_onnx(
            torch.nn.Bilinear(3, 3, 2),
            (torch.randn(2, 3), torch.randn(2, 3)),
            tmp_path / "m.onnx",
            input_names=["a"],
        )
    assert not (tmp_path / "m.onnx").exists()
