"""ONNX Runtime sessions for OrtRunner: the graph session, the eager one, and ORT's rules for CUDA graphs.

ORT's rules for CUDA graphs (CUDA execution provider docs, "Using CUDA Graphs", and the `gpu_graph_id`
run option in onnxruntime_run_options_config_keys.h), and what OrtRunner does about each:

1. Graphs are switched on per session by the CUDA EP provider option `enable_cuda_graph` ("1"). The
   graph session gets it; the eager session (the probe's reference, and every eager call) does not.
2. Every node must be partitioned to the CUDA EP, and control-flow ops (If, Loop, Scan) are not
   supported; inputs and outputs must be tensors. ORT may decline graphs for such a model with only a
   warning on stderr: the GPU test (tests/ort/test_ort_gpu.py) checks that no such warning appears.
3. Inputs and outputs must sit at the same device addresses, with the same shapes, on every run of one
   graph: only IOBinding can promise that. OrtRunner binds every input and output of a rung to a torch
   tensor it allocated once for that rung (binding.py), and a call copies its rows into those tensors;
   nothing is re-bound after the first run.
4. Several graphs per session are told apart by the `gpu_graph_id` run option: an integer; unset means
   0, which is reserved for ORT's own single-graph use; -1 skips capture and replay for that run.
   OrtRunner gives rung i (smallest first) id i + 1, so ids never collide within its own session.
5. The first Run of an id is a regular run (allocations), the next captures the graph and replays it;
   graphs live as long as the session (no release of one graph). The probe therefore runs each rung
   twice, then once more on fresh inputs, and compares that replay with the eager session.
6. Run() must never be called on the session from two threads at once while graphs are used: every
   Run of the graph session holds OrtRunner's lock (eager calls run on the other session, unlocked,
   which ORT allows).
7. ORT's CUDA work runs on its own stream, not torch's: a call waits for torch's current stream before
   Run, so the copied-in rows are there when the graph reads them; Run returns after ORT's stream is
   done, so the outputs are ready for any stream.

None of this was run on a GPU when written: see the README's ORT section for what is validated where.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
GRAPH_ID_KEY = "gpu_graph_id"
SKIP_GRAPH_ID = -1


def has_cuda_ep() -> bool:
    """True when the installed onnxruntime offers the CUDA execution provider (onnxruntime-gpu)."""
    return CUDA_EP in ort.get_available_providers()


def model_bytes(model: str | Path | bytes) -> bytes:
    """The serialized model, kept so a session can be rebuilt after a failure."""
    return model if isinstance(model, bytes) else Path(model).read_bytes()


def graph_session(model: bytes, device_id: int) -> Any:
    """A CUDA EP session with CUDA graphs on (rule 1); only the CUDA EP is listed (rule 2)."""
    options = {"device_id": str(device_id), "enable_cuda_graph": "1"}
    return ort.InferenceSession(model, providers=[(CUDA_EP, options)])


def eager_session(model: bytes, on_cuda: bool, device_id: int) -> Any:
    """A session without graphs: on the CUDA EP (CPU for what it lacks) or on the CPU EP alone."""
    if on_cuda:
        return ort.InferenceSession(model, providers=[(CUDA_EP, {"device_id": str(device_id)}), CPU_EP])
    return ort.InferenceSession(model, providers=[CPU_EP])


def run_options(graph_id: int | None) -> Any:
    """RunOptions carrying `gpu_graph_id` (rule 4); None for a session without graphs."""
    options = ort.RunOptions()
    if graph_id is not None:
        options.add_run_config_entry(GRAPH_ID_KEY, str(graph_id))
    return options
