"""Named tensors on the wire: JSON lists, base64 `.npy` per tensor, or one base64 safetensors blob.

A request body is a JSON object in one of three encodings, and the answer comes back in the one it used:

    {"inputs": {"x": {"dtype": "float32", "data": [[1, 2], [3, 4]]}}}
        -> {"outputs": {"y": {"dtype": "float32", "shape": [2, 2], "data": [[...], [...]]}}}
    {"inputs": {"x": {"npy": "<base64 of a .npy file>"}}} -> {"outputs": {"y": {"npy": "<base64>"}}}
    {"safetensors": "<base64 of a safetensors file holding every input>"} -> {"safetensors": "<base64>"}

Decoding is strict, so a mistake is a TensorError naming the tensor, never a silent conversion: JSON data
must be rectangular numbers of the declared kind (no floats into an integer dtype, no integers out of its
range, booleans only for bool), `.npy` is read without pickles, and both binary formats keep their own
dtype. The wire dtypes are numpy's (WIRE_DTYPES); the safetensors format is read and written by the
`safetensors` package (a core dependency: the LLM weights use it), so no hand-written parser meets
untrusted bytes. Output NaN and infinity are written as JSON's common extension (NaN, Infinity), as
Python's json module reads them.
"""

from __future__ import annotations

import base64
import binascii
import enum
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import safetensors.numpy

from graphrun.serve.infer.errors import TensorError

BODY_KEYS = frozenset({"inputs", "safetensors", "model"})  # model: optional, the served model's name
WIRE_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
# what JSON data may hold for each kind of dtype (numpy kinds: b bool, i/u integers, f floats)
_SOURCE_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


class Encoding(enum.Enum):
    JSON = "json"
    NPY = "npy"
    SAFETENSORS = "safetensors"


@dataclass(frozen=True, slots=True)
class Decoded:
    """A request's tensors, by name, and the encoding its answer takes."""

    encoding: Encoding
    tensors: dict[str, np.ndarray]


def decode(body: object) -> Decoded:
    """The tensors of a parsed JSON body; TensorError for anything else."""
    if not isinstance(body, dict):
        raise TensorError("", "invalid_body", "the body must be a JSON object with `inputs` or `safetensors`")
    unknown = sorted(set(body) - BODY_KEYS)
    if unknown:
        raise TensorError("", "invalid_body", f"unknown fields {unknown}; a body has {sorted(BODY_KEYS)}")
    if "safetensors" in body:
        if "inputs" in body:
            raise TensorError("", "encoding", "send either `inputs` or `safetensors`, not both")
        return Decoded(Encoding.SAFETENSORS, _from_safetensors(body["safetensors"]))
    inputs = body.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise TensorError("", "invalid_body", "`inputs` must be a non-empty object of named tensors")
    encodings = {_encoding_of(name, value) for name, value in inputs.items()}
    if len(encodings) > 1:
        raise TensorError("", "encoding", "every tensor of a request must use one encoding (data or npy)")
    encoding = encodings.pop()
    read = _from_json if encoding is Encoding.JSON else _from_npy
    return Decoded(encoding, {name: read(name, value) for name, value in inputs.items()})


def encode(encoding: Encoding, tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The answer's body (without `model`) for `tensors` in `encoding`."""
    if encoding is Encoding.SAFETENSORS:
        return {"safetensors": safetensors_b64(tensors)}
    if encoding is Encoding.NPY:
        return {"outputs": {name: {"npy": _npy_b64(a)} for name, a in tensors.items()}}
    outputs = {
        name: {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tolist()}
        for name, a in tensors.items()
    }
    return {"outputs": outputs}


def npy_b64(array: np.ndarray) -> str:
    """base64 of `array` as a .npy file (what a client sends in the npy encoding)."""
    return _npy_b64(array)


def safetensors_b64(tensors: Mapping[str, np.ndarray]) -> str:
    """base64 of `tensors` as a safetensors file (what a client sends in the safetensors encoding)."""
    # the package writes a strided view's memory as if it were contiguous: hand it contiguous arrays
    blob = safetensors.numpy.save({name: np.ascontiguousarray(a) for name, a in tensors.items()})
    return base64.b64encode(blob).decode("ascii")


def _npy_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _encoding_of(name: object, value: object) -> Encoding:
    if not isinstance(name, str) or not name:
        raise TensorError("", "invalid_body", f"tensor names must be non-empty strings, got {name!r}")
    if isinstance(value, dict) and "npy" in value:
        return Encoding.NPY
    if isinstance(value, dict) and "data" in value:
        return Encoding.JSON
    raise TensorError(
        name, "invalid_body", 'a tensor is {"dtype": ..., "data": [...]} or {"npy": "<base64>"}'
    )


def _from_json(name: str, value: dict[str, Any]) -> np.ndarray:
    dtype = value.get("dtype")
    if dtype not in WIRE_DTYPES:
        raise TensorError(name, "dtype", f"dtype must be one of {list(WIRE_DTYPES)}, got {dtype!r}")
    target = np.dtype(dtype)
    try:
        raw = np.asarray(value["data"])
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise TensorError(name, "encoding", f"data is not a rectangular array of numbers ({exc})") from None
    if raw.size and raw.dtype.kind not in _SOURCE_KINDS[target.kind]:
        raise TensorError(
            name, "encoding", f"data holds {_kind_words(raw.dtype)}, not values of dtype {dtype}"
        )
    if raw.size and target.kind in "iu":
        info = np.iinfo(target)
        if raw.min() < info.min or raw.max() > info.max:
            raise TensorError(
                name, "encoding", f"data has values outside {dtype}'s range [{info.min}, {info.max}]"
            )
    return raw.astype(target)


def _kind_words(dtype: np.dtype) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "floats"}.get(
        dtype.kind, "values that are not all numbers (strings, nulls, nested objects or ragged lists)"
    )


def _from_npy(name: str, value: dict[str, Any]) -> np.ndarray:
    raw = _b64(name, value["npy"])
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as exc:  # numpy raises several kinds on bad bytes: all of them are the input's fault
        raise TensorError(
            name, "encoding", f"npy is not a readable .npy file ({type(exc).__name__})"
        ) from None
    if not isinstance(array, np.ndarray):
        raise TensorError(name, "encoding", "npy must hold one array (.npy), not an archive (.npz)")
    return _native(name, array)


def _from_safetensors(value: object) -> dict[str, np.ndarray]:
    raw = _b64("", value)
    try:
        tensors = safetensors.numpy.load(raw)
    except Exception as exc:  # SafetensorError, or a dtype numpy lacks (bfloat16)
        raise TensorError("", "encoding", f"safetensors is not a readable safetensors file ({exc})") from None
    if not tensors:
        raise TensorError("", "invalid_body", "the safetensors file holds no tensors")
    return {name: _native(name, array) for name, array in tensors.items()}


def _b64(name: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise TensorError(name, "encoding", "binary tensors travel as base64 strings")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TensorError(name, "encoding", "the base64 string does not decode") from None


def _native(name: str, array: np.ndarray) -> np.ndarray:
    """A contiguous array in this machine's byte order, of a wire dtype."""
    if array.dtype.name not in WIRE_DTYPES:
        raise TensorError(name, "dtype", f"dtype must be one of {list(WIRE_DTYPES)}, got {array.dtype.name}")
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
