"""ORT test fixtures: skip the folder where onnxruntime (graphrun[onnx]) is absent; export models once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="graphrun[onnx] is not installed")
pytest.importorskip("onnxscript", reason="graphrun[onnx] is not installed")

from ort_models import BatchMean, TwoInputs, two_inputs_example

from graphrun.ort import export_onnx


@pytest.fixture(scope="session")
def two_inputs_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[TwoInputs, Path]:
    """TwoInputs with seeded weights and its .onnx file (inputs x, ids; outputs mixed, doubled)."""
    torch.manual_seed(0)
    module = TwoInputs().eval()
    path = tmp_path_factory.mktemp("onnx") / "two_inputs.onnx"
    export_onnx(
        module, two_inputs_example(), path, input_names=["x", "ids"], output_names=["mixed", "doubled"]
    )
    return module, path


@pytest.fixture(scope="session")
def batch_mean_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[BatchMean, Path]:
    module = BatchMean().eval()
    path = tmp_path_factory.mktemp("onnx") / "batch_mean.onnx"
    export_onnx(module, torch.randn(4, 6), path, input_names=["x"])
    return module, path
