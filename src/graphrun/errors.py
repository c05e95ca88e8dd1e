"""Exceptions graphrun raises for user mistakes, so callers can catch them by kind.

Every message names the bad value and what was expected, per the house style.
"""

from __future__ import annotations


class GraphrunError(Exception):
    """Base class of every error graphrun raises on purpose."""


class GraphInputError(GraphrunError, ValueError):
    """A call's inputs do not match what the runner was built for (structure, dtype, device, shape)."""


class StaticValueError(GraphInputError):
    """A non-tensor input declared static was called with a value other than the captured one."""


class ConfigError(GraphrunError, ValueError):
    """A constructor argument is invalid (e.g. an empty ladder, a non-positive size)."""


class BackendUnavailableError(GraphrunError, RuntimeError):
    """The requested backend cannot run here (e.g. backend='cuda' with no CUDA device)."""


class HostSyncError(GraphrunError, RuntimeError):
    """A host synchronisation (.item(), .tolist(), .cpu(), nonzero...) happened during capture.

    The CUDA backend surfaces this as CUDA's own "operation not permitted when stream is capturing";
    the simulator raises this class with the same wording so both are classified alike.
    """


class UncapturableOpError(GraphrunError, RuntimeError):
    """An operator that cannot be recorded into a graph ran during capture."""


class EngineDeadError(GraphrunError, RuntimeError):
    """The engine can no longer step and must be rebuilt (a tensor-parallel rank died, failed or diverged).

    A server treats it as fatal: it fails the requests in flight and shuts down, rather than stepping on."""
