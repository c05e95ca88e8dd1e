"""Eager calls: one Run of the session without graphs at the call's own batch size, thread-safe.

Each call makes its own IOBinding over the caller's tensors (made contiguous) and freshly allocated
output tensors, so concurrent eager calls share nothing and need no lock (ORT allows concurrent Run on
a session without CUDA graphs). Used for batches without a rung, rungs that fell back, and the probe's
reference outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from graphrun.ort.dtypes import numpy_type
from graphrun.ort.io_spec import TensorSpec


class EagerRun:
    """Runs `session` on torch tensors of `device`, returning torch tensors shaped by `outputs`.

    A session on the CPU EP serving CUDA tensors (onnxruntime without the CUDA EP) runs on host copies
    and moves its outputs back to `device`.
    """

    def __init__(
        self,
        session: Any,
        specs: tuple[Sequence[TensorSpec], Sequence[TensorSpec]],
        device: torch.device,
        on_host: bool,
    ) -> None:
        self.session = session
        self._inputs = tuple(specs[0])
        self._outputs = tuple(specs[1])
        self._device = device
        self._run_device = torch.device("cpu") if on_host else device

    def __call__(self, tensors: Sequence[torch.Tensor], batch_size: int) -> tuple[torch.Tensor, ...]:
        """The outputs for one batch (new tensors, owned by the caller)."""
        run_on = self._run_device
        kind, index = run_on.type, run_on.index or 0
        binding = self.session.io_binding()
        feeds = [t.to(run_on).contiguous() for t in tensors]  # kept alive until the run ends
        for spec, tensor in zip(self._inputs, feeds, strict=True):
            binding.bind_input(
                spec.name, kind, index, numpy_type(spec.dtype), list(tensor.shape), tensor.data_ptr()
            )
        outputs = tuple(torch.empty(s.shape(batch_size), dtype=s.dtype, device=run_on) for s in self._outputs)
        for spec, out in zip(self._outputs, outputs, strict=True):
            binding.bind_output(
                spec.name, kind, index, numpy_type(spec.dtype), list(out.shape), out.data_ptr()
            )
        wait_for_torch(run_on)
        self.session.run_with_iobinding(binding)
        return outputs if run_on == self._device else tuple(t.to(self._device) for t in outputs)


def first_outputs(session: Any, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """One plain run on host copies of `tensors`: the output shapes before any spec exists (start-up only)."""
    feed = {arg.name: t.detach().cpu().numpy() for arg, t in zip(session.get_inputs(), tensors, strict=True)}
    return tuple(torch.from_numpy(out) for out in session.run(None, feed))


def wait_for_torch(device: torch.device) -> None:
    """Wait for torch's current stream on a CUDA device, so ORT reads finished copies (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
