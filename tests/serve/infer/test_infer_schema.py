"""The schema's checks, in their order, each naming the tensor and the rule."""

from __future__ import annotations

import numpy as np
import pytest

from graphrun.serve.infer.errors import TensorError
from graphrun.serve.infer.schema import InferSchema, TensorSpec

SCHEMA = InferSchema(
    inputs=(TensorSpec("x", "float32", (None, 4), finite=True), TensorSpec("ids", "int64", (None,))),
    outputs=(TensorSpec("y", "float32", (None, 4)),),
    rungs=(1, 2, 4),
    max_rows=16,
)


def _good(rows: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.zeros((rows, 4), np.float32), "ids": np.zeros(rows, np.int64)}


def test_a_good_request_gives_its_rows():
    assert SCHEMA.validate(_good(3)) == 3


@pytest.mark.parametrize(
    ("change", "name", "rule"),
    [
        ({"z": np.zeros((3, 4), np.float32)}, "z", "unknown_name"),
        ({"ids": None}, "ids", "missing"),
        ({"x": np.zeros((3, 4), np.float64)}, "x", "dtype"),
        ({"x": np.zeros((3, 4, 1), np.float32)}, "x", "rank"),
        ({"x": np.zeros((3, 5), np.float32)}, "x", "static_dim"),
        ({"ids": np.zeros(2, np.int64)}, "ids", "batch"),
        ({"x": np.zeros((0, 4), np.float32), "ids": np.zeros(0, np.int64)}, "x", "batch"),
        ({"x": np.zeros((17, 4), np.float32), "ids": np.zeros(17, np.int64)}, "x", "too_large"),
        ({"x": np.full((3, 4), np.nan, np.float32)}, "x", "nan"),
        ({"x": np.full((3, 4), np.inf, np.float32)}, "x", "nan"),
    ],
)
def test_each_rule_names_its_tensor(change, name, rule):
    tensors = {**_good(), **change}
    tensors = {k: v for k, v in tensors.items() if v is not None}
    with pytest.raises(TensorError) as caught:
        SCHEMA.validate(tensors)
    assert (caught.value.name, caught.value.rule) == (name, rule)
    assert str(caught.value).startswith(f"{name}: ")


def test_nan_is_fine_where_the_model_does_not_forbid_it():
    schema = InferSchema((TensorSpec("x", "float32", (None,)),), (), (1,), 4)
    assert schema.validate({"x": np.array([np.nan], np.float32)}) == 1
