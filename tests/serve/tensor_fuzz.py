"""The tensors and bodies the /v1/infer and /act fuzz tests send: any dtype, shape and fill, in any of the
three encodings (JSON nested lists, base64 .npy, one base64 safetensors blob)."""

from __future__ import annotations

import numpy as np

from graphrun.serve.infer.codec import npy_b64, safetensors_b64

Spec = tuple[str, tuple[int, ...], str]  # dtype, shape, fill


def fuzz_array(dtype: str, shape: tuple[int, ...], fill: str, max_id: int = 0) -> np.ndarray:
    """An array of `dtype` and `shape` filled as `fill` says ("ids": integers below max_id)."""
    base = np.random.default_rng(0).standard_normal(shape) * 3
    if fill == "ones":
        base = np.ones(shape)
    elif fill == "ids":
        base = np.random.default_rng(1).integers(0, max_id, shape)
    elif fill == "negative":
        base = -np.ones(shape)
    elif fill in ("nan", "inf") and base.size:
        base.flat[0] = np.nan if fill == "nan" else np.inf
    elif fill == "huge":
        base = base * 1e300
    with np.errstate(all="ignore"):
        if np.dtype(dtype).kind in "iub":
            base = np.nan_to_num(base, nan=0, posinf=0, neginf=0).clip(-100, 100)
        return base.astype(dtype)


def fuzz_body(encoding: str, tensors: dict[str, Spec], max_id: int = 0) -> dict:
    """The request body carrying `tensors` in `encoding` ("json", "npy" or "safetensors"); complex
    tensors, which safetensors cannot hold, are left out of it, and go as their real parts in JSON."""
    arrays = {name: fuzz_array(*spec, max_id=max_id) for name, spec in tensors.items()}
    if encoding == "safetensors":
        return {"safetensors": safetensors_b64({n: a for n, a in arrays.items() if a.dtype.kind != "c"})}
    if encoding == "npy":
        return {"inputs": {name: {"npy": npy_b64(a)} for name, a in arrays.items()}}
    as_json = {name: {"dtype": spec[0], "data": _listed(arrays[name])} for name, spec in tensors.items()}
    return {"inputs": as_json}


def _listed(array: np.ndarray) -> list:
    """JSON data for `array` (complex values, which JSON lacks, as their real parts)."""
    return (array.real if array.dtype.kind == "c" else array).tolist()
