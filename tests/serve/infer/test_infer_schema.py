"""The schema's checks, in their order, each naming the tensor and the rule."""

from __future__ import annotations

import numpy as np
import pytest

from graphrun.errors import ConfigError
from graphrun.serve.infer.dims import DynamicDim
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


LENGTH = DynamicDim("length", {"ids": 1, "feats": 1}, (4, 8))
BUCKETED = InferSchema(
    inputs=(TensorSpec("ids", "int64", (None, None)), TensorSpec("feats", "float32", (None, None, 3))),
    outputs=(),
    rungs=(1, 2),
    max_rows=4,
    dims=(LENGTH,),
)


def _seq(length: int, feats_length: int | None = None, width: int = 3) -> dict[str, np.ndarray]:
    other = length if feats_length is None else feats_length
    return {"ids": np.zeros((2, length), np.int64), "feats": np.zeros((2, other, width), np.float32)}


@pytest.mark.parametrize("length", [1, 5, 8])
def test_a_dynamic_dim_takes_any_size_up_to_its_top_rung(length):
    assert BUCKETED.validate(_seq(length)) == 2


@pytest.mark.parametrize(
    ("tensors", "name", "rule", "says"),
    [
        (_seq(9), "ids", "too_large", "dim 1 (length) is 9, above the top rung 8 of length"),
        (_seq(5, 6), "feats", "dynamic_dim", "dim 1 (length) is 6 but ids has 5"),
        (_seq(0), "ids", "dynamic_dim", "empty"),
        (_seq(5, width=4), "feats", "static_dim", "dim 2 must be 3 (shape [batch, any, 3]), got 4"),
    ],
)
def test_a_dynamic_dim_out_of_range_or_a_static_dim_that_differs_is_named(tensors, name, rule, says):
    with pytest.raises(TensorError) as caught:
        BUCKETED.validate(tensors)
    assert (caught.value.name, caught.value.rule) == (name, rule)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"name": "batch"}, "other than 'batch'"),
        ({"axes": {"ids": 0}}, "axes must be >= 1"),
        ({"rungs": ()}, "rungs must be positive"),
        ({"outputs": {"y": 0}}, "outputs' axes must be >= 1"),
    ],
)
def test_a_bad_dim_declaration_names_the_fix(kwargs, says):
    declared = {"name": "length", "axes": {"ids": 1}, "rungs": (4,), **kwargs}
    with pytest.raises(ConfigError, match=says):
        DynamicDim(**declared)
