"""One rung's fixed buffers and the IOBinding that points the session at them, bound once for good.

The buffers are torch tensors allocated at the rung's size on the runner's device; the binding hands
ORT their raw addresses (bind_input/bind_output with buffer_ptr), so ORT reads and writes torch memory
and no OrtValue is made per call. A call copies its rows into the input buffers, fills the rows between
its batch and the rung (the pad policy), runs, and gets back views of the output buffers cut to its
batch. Those views alias the buffers until the rung's next run (clone_outputs=True in the runner copies).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from graphrun.ort.dtypes import numpy_type
from graphrun.ort.eager import wait_for_torch
from graphrun.ort.io_spec import TensorSpec
from graphrun.ort.sessions import run_options


class RungBinding:
    """The buffers and IOBinding of one rung; `graph_id` is its gpu_graph_id, None without graphs."""

    def __init__(
        self,
        session: Any,
        rung: int,
        specs: tuple[Sequence[TensorSpec], Sequence[TensorSpec]],
        device: torch.device,
        graph_id: int | None,
    ) -> None:
        inputs, outputs = specs
        self.rung = rung
        self.graph_id = graph_id
        self.input_specs = tuple(inputs)
        self.output_specs = tuple(outputs)
        self.inputs = tuple(torch.zeros(s.shape(rung), dtype=s.dtype, device=device) for s in inputs)
        self.outputs = tuple(torch.zeros(s.shape(rung), dtype=s.dtype, device=device) for s in outputs)
        self.device = device
        self.io_binding = session.io_binding()
        self._session = session
        self._run_options = run_options(graph_id)
        self._bind(device)

    def _bind(self, device: torch.device) -> None:
        kind, index = device.type, device.index or 0
        for spec, buffer in zip(self.input_specs, self.inputs, strict=True):
            element = numpy_type(spec.dtype)
            self.io_binding.bind_input(spec.name, kind, index, element, list(buffer.shape), buffer.data_ptr())
        for spec, buffer in zip(self.output_specs, self.outputs, strict=True):
            element = numpy_type(spec.dtype)
            self.io_binding.bind_output(
                spec.name, kind, index, element, list(buffer.shape), buffer.data_ptr()
            )

    @property
    def nbytes(self) -> int:
        """Bytes of this rung's input and output buffers."""
        return sum(t.numel() * t.element_size() for t in (*self.inputs, *self.outputs))

    def copy_in(
        self, tensors: Sequence[torch.Tensor], batch_size: int, pad: str | float | int | None
    ) -> None:
        """Copy a call's tensors into the buffers and fill rows batch_size..rung per `pad`.

        pad: "repeat" (the call's last row), a number, None (whatever the previous call left) or
        "forbid" (the caller only sends exact-size batches). A tensor that is the buffer's own view
        (static_inputs()) is not copied.
        """
        for spec, buffer, tensor in zip(self.input_specs, self.inputs, tensors, strict=True):
            if not spec.batched:
                _copy(buffer, tensor)
                continue
            _copy(buffer[:batch_size], tensor)
            if batch_size < self.rung:
                _pad(buffer[batch_size:], tensor, pad)

    def run(self) -> None:
        """One Run of the session on the bound buffers (a graph capture or replay when graph_id is set).

        Waits for torch's stream first (sessions.py, rule 7): the copy-in must have landed."""
        wait_for_torch(self.device)
        self._session.run_with_iobinding(self.io_binding, self._run_options)

    def results(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The output buffers, batched ones cut to `batch_size` (views: valid until the next run)."""
        return tuple(
            buffer[:batch_size] if spec.batched else buffer
            for spec, buffer in zip(self.output_specs, self.outputs, strict=True)
        )


def _copy(buffer: torch.Tensor, tensor: torch.Tensor) -> None:
    if tensor.data_ptr() != buffer.data_ptr() or tensor.shape != buffer.shape:
        buffer.copy_(tensor)


def _pad(rows: torch.Tensor, tensor: torch.Tensor, pad: str | float | int | None) -> None:
    if pad == "repeat":
        rows.copy_(tensor[-1:].expand_as(rows))
    elif isinstance(pad, int | float):
        rows.fill_(pad)
