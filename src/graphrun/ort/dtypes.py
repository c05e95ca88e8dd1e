"""ONNX tensor types as ORT names them ("tensor(float)"), as torch dtypes, and as numpy types for binding.

IOBinding.bind_input/bind_output take a numpy element type; bfloat16 has none in numpy, so it is not
offered here (a model with a bfloat16 input or output is refused at start-up, naming it).
"""

from __future__ import annotations

import numpy as np
import torch

from graphrun.errors import ConfigError

# ORT's type string -> (torch dtype, numpy type)
_TYPES: dict[str, tuple[torch.dtype, type[np.generic]]] = {
    "tensor(float)": (torch.float32, np.float32),
    "tensor(float16)": (torch.float16, np.float16),
    "tensor(double)": (torch.float64, np.float64),
    "tensor(int64)": (torch.int64, np.int64),
    "tensor(int32)": (torch.int32, np.int32),
    "tensor(int16)": (torch.int16, np.int16),
    "tensor(int8)": (torch.int8, np.int8),
    "tensor(uint8)": (torch.uint8, np.uint8),
    "tensor(bool)": (torch.bool, np.bool_),
}
_NUMPY_OF_TORCH = {dtype: numpy_type for dtype, numpy_type in _TYPES.values()}


def torch_dtype(ort_type: str, name: str) -> torch.dtype:
    """The torch dtype of an ORT type string; ConfigError naming the tensor when it is not supported."""
    found = _TYPES.get(ort_type)
    if found is None:
        raise ConfigError(
            f"model tensor {name!r} has type {ort_type}; OrtRunner binds {sorted(_TYPES)} "
            "(bfloat16 has no numpy type for IOBinding: export that tensor as float16 or float32)"
        )
    return found[0]


def numpy_type(dtype: torch.dtype) -> type[np.generic]:
    """The numpy element type IOBinding takes for a torch dtype from torch_dtype()."""
    return _NUMPY_OF_TORCH[dtype]
