"""The wire formats: every encoding round-trips every wire dtype; decoding is strict and names the tensor."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import safetensors.numpy

from graphrun.serve.infer.codec import WIRE_DTYPES, Encoding, decode, encode, npy_b64, safetensors_b64
from graphrun.serve.infer.errors import TensorError


def _sample(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype == "bool":
        return rng.random((3, 2)) > 0.5
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, (3, 2), dtype=dtype, endpoint=True)
    return rng.standard_normal((3, 2)).astype(dtype)


def _client_body(encoding: Encoding, tensors: dict[str, np.ndarray]) -> dict:
    """What a client sends (its own encoder, written from the documented format)."""
    if encoding is Encoding.SAFETENSORS:
        return {"safetensors": safetensors_b64(tensors)}
    if encoding is Encoding.NPY:
        return {"inputs": {n: {"npy": npy_b64(a)} for n, a in tensors.items()}}
    return {"inputs": {n: {"dtype": a.dtype.name, "data": a.tolist()} for n, a in tensors.items()}}


@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_a_request_decodes_to_the_tensors_sent_and_an_answer_reads_back_alike(encoding, dtype):
    tensors = {"a": _sample(dtype), "b": _sample(dtype)[:, :1]}
    decoded = decode(_client_body(encoding, tensors))
    assert decoded.encoding is encoding
    assert sorted(decoded.tensors) == ["a", "b"]  # a safetensors file keeps its own order
    for name, array in tensors.items():
        assert decoded.tensors[name].dtype == array.dtype
        np.testing.assert_array_equal(decoded.tensors[name], array)
    answer = encode(encoding, decoded.tensors)
    # an answer has the same shape as a request (outputs for inputs): it decodes the same way
    again = decode({"inputs": answer["outputs"]} if "outputs" in answer else answer)
    for name, array in tensors.items():
        np.testing.assert_array_equal(again.tensors[name], array)
        assert again.tensors[name].dtype == array.dtype


def test_a_json_answer_carries_dtype_and_shape():
    answer = encode(Encoding.JSON, {"y": np.arange(6, dtype=np.int16).reshape(2, 3)})
    assert answer == {"outputs": {"y": {"dtype": "int16", "shape": [2, 3], "data": [[0, 1, 2], [3, 4, 5]]}}}


def test_big_endian_npy_is_read_in_native_order():
    array = np.arange(4, dtype=">f4").reshape(2, 2)
    decoded = decode({"inputs": {"x": {"npy": npy_b64(array)}}})
    assert decoded.tensors["x"].dtype == np.dtype("float32")
    np.testing.assert_array_equal(decoded.tensors["x"], array)


@pytest.mark.parametrize(
    ("body", "name", "rule"),
    [
        ([1, 2], "", "invalid_body"),
        ({"inputs": {}}, "", "invalid_body"),
        ({"inputs": {"x": [1, 2]}}, "x", "invalid_body"),
        ({"inputs": {"x": {"dtype": "float32", "data": [1]}}, "extra": 1}, "", "invalid_body"),
        ({"inputs": {"x": {"dtype": "float8", "data": [1.0]}}}, "x", "dtype"),
        ({"inputs": {"x": {"dtype": "int32", "data": [1.5]}}}, "x", "encoding"),
        ({"inputs": {"x": {"dtype": "int8", "data": [300]}}}, "x", "encoding"),
        ({"inputs": {"x": {"dtype": "bool", "data": [1, 0]}}}, "x", "encoding"),
        ({"inputs": {"x": {"dtype": "float32", "data": [[1], [1, 2]]}}}, "x", "encoding"),
        ({"inputs": {"x": {"dtype": "float32", "data": ["a"]}}}, "x", "encoding"),
        ({"inputs": {"x": {"dtype": "float32", "data": [None]}}}, "x", "encoding"),
        ({"inputs": {"x": {"npy": "not base64!"}}}, "x", "encoding"),
        ({"inputs": {"x": {"npy": base64.b64encode(b"garbage").decode()}}}, "x", "encoding"),
        ({"inputs": {"x": {"npy": npy_b64(np.array(["s"]))}}}, "x", "dtype"),
        (
            {"inputs": {"x": {"npy": npy_b64(np.zeros(2))}, "y": {"dtype": "float32", "data": [1]}}},
            "",
            "encoding",
        ),
        ({"safetensors": base64.b64encode(safetensors.numpy.save({})).decode()}, "", "invalid_body"),
        ({"safetensors": base64.b64encode(b"\xff" * 16).decode()}, "", "encoding"),
        ({"safetensors": "", "inputs": {}}, "", "encoding"),
    ],
)
def test_a_bad_body_is_a_tensor_error_naming_the_tensor_and_the_rule(body, name, rule):
    with pytest.raises(TensorError) as caught:
        decode(body)
    assert (caught.value.name, caught.value.rule) == (name, rule)
