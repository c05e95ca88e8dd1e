"""Which backend an OrtRunner gets, on which device, and why not graphs: decided once, from facts.

The facts are the requested backend, whether the installed onnxruntime has the CUDA execution provider,
and where the example inputs live. AUTO never fails: without the CUDA EP or without CUDA inputs it runs
eager and gives the reason (status() and one INFO line). An explicit backend that cannot run here fails
at once, naming what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graphrun.errors import BackendUnavailableError, ConfigError
from graphrun.graphs.status import CaptureFailure
from graphrun.ort.options import OrtBackend

NO_CUDA_EP = (
    "onnxruntime has no CUDAExecutionProvider (the CPU package is installed); "
    "install onnxruntime-gpu for CUDA graphs"
)
CPU_INPUTS = "the example inputs are CPU tensors; pass CUDA tensors for CUDA graphs"


@dataclass(frozen=True, slots=True)
class Placement:
    """The backend chosen, the device of the runner's tensors, whether sessions run on the CUDA EP, and
    why there are no graphs (reason and detail; None when the backend makes them)."""

    backend: OrtBackend
    device: torch.device
    on_cuda_ep: bool
    reason: CaptureFailure | None = None
    detail: str = ""

    @property
    def label(self) -> str:
        """The backend as status() names it."""
        return f"ort-{self.backend.value.replace('_', '-')}"


def place(requested: OrtBackend, device: torch.device, cuda_ep: bool) -> Placement:
    """The placement for a requested backend, example device and CUDA EP availability."""
    on_cuda = device.type == "cuda" and cuda_ep
    if requested is OrtBackend.AUTO:
        if on_cuda:
            return Placement(OrtBackend.CUDA_GRAPH, device, True)
        why = NO_CUDA_EP if not cuda_ep else CPU_INPUTS
        return Placement(OrtBackend.EAGER, device, on_cuda, CaptureFailure.NO_GRAPH_BACKEND, why)
    if requested is OrtBackend.EAGER:
        return Placement(requested, device, on_cuda, CaptureFailure.MODE_NONE, "backend='eager'")
    if device.type == "cuda" and not cuda_ep:
        raise BackendUnavailableError(f"backend={requested.value!r} with CUDA inputs: {NO_CUDA_EP}")
    if requested is OrtBackend.CUDA_GRAPH and device.type != "cuda":
        raise ConfigError(f"backend='cuda_graph': {CPU_INPUTS}")
    return Placement(requested, device, on_cuda)
