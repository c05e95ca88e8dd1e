"""Tiny torch modules exported to ONNX for the ORT tests, and an ONNX graph written by hand.

Each module is exported once per test session (conftest.py): the dynamo exporter takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch


class TwoInputs(torch.nn.Module):
    """(x: (b, 8) float32, ids: (b, 3) int64) -> (relu(linear(x)) + embed(ids).sum(1), x * 2).

    Output shapes: (b, 4) and (b, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)
        self.embed = torch.nn.Embedding(16, 4)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(self.linear(x)) + self.embed(ids).sum(1), x * 2


class BatchMean(torch.nn.Module):
    """x - x.mean(0): every row depends on the others, so padding changes the answer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(0, keepdim=True)


def two_inputs_example(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 8, generator=generator), torch.randint(0, 16, (batch, 3), generator=generator)


def reshape_by_four(path: Path) -> Path:
    """x: (batch, 2) -> the same values, through Reshape to (4, -1) and back: fails at batch 1 (2 values)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Reshape", ["x", "four"], ["mid"]),
        helper.make_node("Reshape", ["mid", "back"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "reshape_by_four",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [
            helper.make_tensor("four", TensorProto.INT64, [2], [4, -1]),
            helper.make_tensor("back", TensorProto.INT64, [2], [-1, 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def with_fixed_input(path: Path) -> Path:
    """(x: (batch, 3), w: (3,) not batched) -> x * w: a model whose second input has no batch dim."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "with_fixed_input",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
