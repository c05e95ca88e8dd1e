"""graphrun: capture PyTorch inference once as a CUDA graph and replay it.

`from graphrun import GraphRunner` works on any callable whose inputs and outputs are pytrees of tensors.
"""

from graphrun.errors import ConfigError, GraphInputError, GraphrunError, StaticValueError
from graphrun.graphs import CallFallback, CaptureFailure, FaultPlan, GraphRunner, RungStatus, SimBackend

__version__ = "0.1.0"

__all__ = [
    "CallFallback",
    "CaptureFailure",
    "ConfigError",
    "FaultPlan",
    "GraphInputError",
    "GraphRunner",
    "GraphrunError",
    "RungStatus",
    "SimBackend",
    "StaticValueError",
    "__version__",
]
