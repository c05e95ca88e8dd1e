"""Host-to-device copies that never make the host wait (asynchronous scheduling depends on it)."""

from __future__ import annotations

from typing import Any

import torch


def to_device(
    data: torch.Tensor | list[Any], device: torch.device | str, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A CPU tensor or (nested) list -> a tensor on `device`, queued without blocking the host.

    On CUDA the data goes through pinned memory and an asynchronous copy: a copy from pageable memory
    synchronizes the stream, which would wait for the step still running. Elsewhere a plain copy.
    """
    device = torch.device(device)
    pin = device.type == "cuda"
    if isinstance(data, torch.Tensor):
        host = data.pin_memory() if pin else data
    else:
        host = torch.tensor(data, dtype=dtype, pin_memory=pin)
    return host.to(device, non_blocking=pin)
