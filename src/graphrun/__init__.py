"""graphrun: capture PyTorch inference once as a CUDA graph and replay it.

`from graphrun import GraphRunner` works on any callable whose inputs and outputs are pytrees of tensors;
`from graphrun import LLM, SamplingParams` is the offline LLM API. Every exception graphrun raises on
purpose is importable from here too.

Names that need torch load on first use (PEP 562 `__getattr__`), so importing the package, and with it
`graphrun --help`, costs no torch. The TYPE_CHECKING imports show the same names to type checkers and IDEs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from graphrun.errors import (
    BackendUnavailableError,
    ConfigError,
    EngineDeadError,
    GraphInputError,
    GraphrunError,
    HostSyncError,
    StaticValueError,
    UncapturableOpError,
)

if TYPE_CHECKING:
    from graphrun.graphs.backends.faulty import InjectedReplayFault
    from graphrun.graphs.backends.sim import FaultPlan, SimBackend
    from graphrun.graphs.modes import BatchDescriptor, CudaGraphMode
    from graphrun.graphs.options import CaptureWhen, RunnerOptions
    from graphrun.graphs.piecewise.registry import mark_uncapturable, unmark_uncapturable
    from graphrun.graphs.runner import GraphRunner
    from graphrun.graphs.status import CallFallback, CaptureFailure, RungStatus
    from graphrun.llm.api import LLM
    from graphrun.llm.block_manager import OutOfBlocksError
    from graphrun.llm.checkpoint import CheckpointError
    from graphrun.llm.config import UnsupportedModelError
    from graphrun.llm.kv_cache import KVCacheBudgetError
    from graphrun.llm.parallel.control import RankDivergence
    from graphrun.llm.parallel.ranks import RankFailure
    from graphrun.llm.parallel.shards import ShardError
    from graphrun.llm.sampling_params import SamplingParams, SamplingParamsError
    from graphrun.llm.scheduler import RequestRejected
    from graphrun.llm.tokenizer import TokenizerError
    from graphrun.pipeline.pipeline import Pipeline
    from graphrun.pipeline.policy.config import ExamplePolicyConfig
    from graphrun.pipeline.policy.example import ExamplePolicy
    from graphrun.pipeline.policy.observation import Observation, ObservationError
    from graphrun.pipeline.stage import Stage, StageRunner
    from graphrun.pipeline.startup import StageReport, StageTier
    from graphrun.serve.host.messages import EngineFailure, QueueFull, Unavailable
    from graphrun.serve.infer.errors import TensorError

from graphrun.version import __version__

# public name -> the module that defines it, imported on first access
_LAZY = {
    "CallFallback": "graphrun.graphs.status",
    "CaptureFailure": "graphrun.graphs.status",
    "RungStatus": "graphrun.graphs.status",
    "FaultPlan": "graphrun.graphs.backends.sim",
    "InjectedReplayFault": "graphrun.graphs.backends.faulty",
    "SimBackend": "graphrun.graphs.backends.sim",
    "GraphRunner": "graphrun.graphs.runner",
    "BatchDescriptor": "graphrun.graphs.modes",
    "CudaGraphMode": "graphrun.graphs.modes",
    "CaptureWhen": "graphrun.graphs.options",
    "RunnerOptions": "graphrun.graphs.options",
    "mark_uncapturable": "graphrun.graphs.piecewise.registry",
    "unmark_uncapturable": "graphrun.graphs.piecewise.registry",
    "LLM": "graphrun.llm.api",
    "SamplingParams": "graphrun.llm.sampling_params",
    "SamplingParamsError": "graphrun.llm.sampling_params",
    "CheckpointError": "graphrun.llm.checkpoint",
    "KVCacheBudgetError": "graphrun.llm.kv_cache",
    "OutOfBlocksError": "graphrun.llm.block_manager",
    "ShardError": "graphrun.llm.parallel.shards",
    "RankDivergence": "graphrun.llm.parallel.control",
    "RankFailure": "graphrun.llm.parallel.ranks",
    "RequestRejected": "graphrun.llm.scheduler",
    "TokenizerError": "graphrun.llm.tokenizer",
    "UnsupportedModelError": "graphrun.llm.config",
    "Pipeline": "graphrun.pipeline.pipeline",
    "Stage": "graphrun.pipeline.stage",
    "StageRunner": "graphrun.pipeline.stage",
    "StageReport": "graphrun.pipeline.startup",
    "StageTier": "graphrun.pipeline.startup",
    "ExamplePolicy": "graphrun.pipeline.policy.example",
    "ExamplePolicyConfig": "graphrun.pipeline.policy.config",
    "Observation": "graphrun.pipeline.policy.observation",
    "ObservationError": "graphrun.pipeline.policy.observation",
    "EngineFailure": "graphrun.serve.host.messages",
    "QueueFull": "graphrun.serve.host.messages",
    "Unavailable": "graphrun.serve.host.messages",
    "TensorError": "graphrun.serve.infer.errors",
}

__all__ = [
    "LLM",
    "BackendUnavailableError",
    "BatchDescriptor",
    "CallFallback",
    "CaptureFailure",
    "CaptureWhen",
    "CheckpointError",
    "ConfigError",
    "CudaGraphMode",
    "EngineDeadError",
    "EngineFailure",
    "ExamplePolicy",
    "ExamplePolicyConfig",
    "FaultPlan",
    "GraphInputError",
    "GraphRunner",
    "GraphrunError",
    "HostSyncError",
    "InjectedReplayFault",
    "KVCacheBudgetError",
    "Observation",
    "ObservationError",
    "OutOfBlocksError",
    "Pipeline",
    "QueueFull",
    "RankDivergence",
    "RankFailure",
    "RequestRejected",
    "RungStatus",
    "RunnerOptions",
    "SamplingParams",
    "SamplingParamsError",
    "ShardError",
    "SimBackend",
    "Stage",
    "StageReport",
    "StageRunner",
    "StageTier",
    "StaticValueError",
    "TensorError",
    "TokenizerError",
    "Unavailable",
    "UncapturableOpError",
    "UnsupportedModelError",
    "__version__",
    "mark_uncapturable",
    "unmark_uncapturable",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562) and cache the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graphrun' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
