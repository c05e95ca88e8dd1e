"""CPU simulator of CUDA-graph semantics, so every runner behaviour is tested without a GPU.

Capture runs the body once under a dispatch mode that records each aten op with the very tensors it
read and wrote. Replay re-runs the recorded ops against those tensors and copies each fresh result into
the tensor recorded at capture, so, as on CUDA:
- control flow is frozen: Python is not re-run, only the recorded ops;
- addresses are frozen: the ops read the static buffers they read at capture; a caller who writes
  somewhere else (skips the copy-in) reads stale data;
- host syncs during capture raise: .item(), .tolist(), .cpu(), .numpy(), bool(), nonzero, masked
  indexing and friends, on a "device" tensor (a static buffer or anything computed during capture),
  raise HostSyncError worded like CUDA's "operation not permitted when stream is capturing".
Collectives (torch.distributed over gloo, for tensor-parallel tests) are recorded and re-run like any op:
a functional collective (`_c10d_functional.all_reduce`, ...) is waited for as soon as replay issues it,
and so is a `dist.all_reduce` (`c10d.allreduce_`, whose Work the recording keeps); their `wait_tensor`
ops are then no-ops. Every rank must replay its graphs in the same order, as on NCCL.
It does not model the shared memory pool: each recording keeps its own intermediates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from graphrun.errors import HostSyncError, UncapturableOpError

aten = torch.ops.aten

# Ops whose output size or value needs the host to read device memory: CUDA cannot capture them.
_SYNCING_OPS = frozenset(
    {
        aten._local_scalar_dense.default,
        aten.nonzero.default,
        aten.masked_select.default,
        aten.equal.default,
        aten.is_nonzero.default,
        aten.unique_dim.default,
        aten._unique2.default,
        aten.unique_consecutive.default,
        aten.repeat_interleave.Tensor,
    }
)
# c10d: torch.distributed's in-place collectives (they return a Work); _c10d_functional: the functional
# ones (they return a tensor that wait_tensor completes).
_COLLECTIVE_NAMESPACES = frozenset({"c10d", "_c10d_functional"})
_WAIT_TENSOR = torch.ops._c10d_functional.wait_tensor.default
# Tensor methods that copy device data to the host (no aten op runs for a CPU tensor, so catch them here).
_SYNCING_METHODS = frozenset(
    {
        torch.Tensor.item,
        torch.Tensor.tolist,
        torch.Tensor.cpu,
        torch.Tensor.numpy,
        torch.Tensor.__bool__,
        torch.Tensor.__int__,
        torch.Tensor.__float__,
        torch.Tensor.__index__,
    }
)
_SYNC_MESSAGE = (
    "operation not permitted when stream is capturing (graphrun sim: {what} reads device data on the host)"
)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Failures to inject, by rung size, for testing fallback paths without a broken model.

    capture: the capture of the rung raises this. replay: every replay of the rung raises this.
    stale: rungs whose graph records nothing, so a replay leaves the outputs of the capture run in place,
    as a graph that lost its work would (verification then finds the mismatch).
    """

    capture: dict[int, BaseException] = field(default_factory=dict)
    replay: dict[int, BaseException] = field(default_factory=dict)
    stale: frozenset[int] = frozenset()


@dataclass(slots=True)
class _Op:
    func: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    targets: list[tuple[int, torch.Tensor]]  # (flat output index, tensor recorded at capture) to copy into


class SimGraph:
    """A recorded op list; replay re-runs it against the recorded tensors.

    Replay runs in the autograd mode capture ran in: a CUDA graph replays device work only, whatever the
    caller's mode, and tensors recorded under inference mode can only be written under it.
    """

    def __init__(self, ops: list[_Op], nbytes: int, replay_error: BaseException | None) -> None:
        self._ops = ops
        self.nbytes = nbytes
        self._replay_error = replay_error
        self._inference_mode = torch.is_inference_mode_enabled()
        self._grad = torch.is_grad_enabled()

    def replay(self) -> None:
        """Re-run every recorded op and write its results where capture's results live."""
        if self._replay_error is not None:
            raise self._replay_error
        if self._inference_mode:
            with torch.inference_mode():
                self._run()
        else:
            with torch.set_grad_enabled(self._grad):
                self._run()

    def _run(self) -> None:
        for op in self._ops:
            out = op.func(*op.args, **op.kwargs)
            if op.func.namespace in _COLLECTIVE_NAMESPACES:
                _wait(op.func, out)
            if op.targets:
                flat = _flat_outputs(op.func, out)
                for index, target in op.targets:
                    target.copy_(flat[index][1])

    def release(self) -> None:
        """Drop the recording (and the intermediates it keeps alive)."""
        self._ops = []


class SimBackend:
    """Records aten ops on the CPU and replays them with CUDA-graph constraints."""

    name = "sim"

    def __init__(
        self,
        faults: FaultPlan | None = None,
        uncapturable: frozenset[Any] = frozenset(),
    ) -> None:
        self.device = torch.device("cpu")
        self._faults = faults or FaultPlan()
        self._uncapturable = uncapturable
        self._pool_bytes = 0
        self._static: set[int] = set()
        self.current_rung: int | None = None  # set by the runner so faults can target a rung

    @property
    def uncapturable(self) -> frozenset[Any]:
        """Ops this simulator refuses to capture, besides host syncs."""
        return self._uncapturable

    def register_static(self, tensors: list[torch.Tensor]) -> None:
        """Mark the runner's static buffers as device memory (reading them on the host is a sync)."""
        self._static.update(_storage_key(t) for t in tensors)

    def warmup(self, body: Callable[[], object], iters: int) -> None:
        """Run eagerly; there is no stream to warm, but lazy module state is initialised the same way."""
        for _ in range(iters):
            body()

    def estimate_bytes(self, body: Callable[[], object]) -> int:
        """Bytes of every fresh tensor one run creates: exactly what a recording of it keeps alive."""
        counter = _Recorder(self._static, self._uncapturable, record=False)
        with counter:
            body()
        return counter.nbytes

    def projected_pool_bytes(self, estimate: int) -> int:
        """Recordings keep their own intermediates, so the pool is the sum of all of them."""
        return self._pool_bytes + estimate

    def capture(self, body: Callable[[], object], label: str = "") -> SimGraph:
        """Record one run of `body`; host syncs and uncapturable ops raise like CUDA's capture."""
        rung = self.current_rung
        if rung is not None and rung in self._faults.capture:
            raise self._faults.capture[rung]
        recorder = _Recorder(self._static, self._uncapturable, record=True)
        with _HostSyncGuard(recorder.device_keys), recorder:
            body()
        self._pool_bytes += recorder.nbytes
        replay_error = self._faults.replay.get(rung) if rung is not None else None
        ops = [] if rung in self._faults.stale else recorder.ops
        return SimGraph(ops, recorder.nbytes, replay_error)

    def pool_bytes(self) -> int:
        """Bytes kept alive by all recordings."""
        return self._pool_bytes

    def synchronize(self) -> None:
        """Nothing is asynchronous on the CPU."""

    @contextlib.contextmanager
    def range(self, label: str) -> Iterator[None]:
        """No profiler ranges in the simulator."""
        yield


@contextlib.contextmanager
def capture_checks(device_keys: set[int], uncapturable: frozenset[Any] = frozenset()) -> Iterator[None]:
    """Raise, as a capture would, on host syncs and uncapturable ops in the block (nothing is kept).

    device_keys: storage keys (storage_key) of the tensors that count as device memory; tensors the block
    creates join them. The piecewise analysis probes one op at a time with this, on any device.
    """
    recorder = _Recorder(device_keys, uncapturable, record=True)
    with _HostSyncGuard(recorder.device_keys), recorder:
        yield


def storage_key(t: torch.Tensor) -> int:
    """The identity of a tensor's storage, as the simulator's checks know it."""
    return _storage_key(t)


def _storage_key(t: torch.Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


class _Recorder(TorchDispatchMode):
    """Runs each aten op, remembers it and the tensors it produced."""

    def __init__(self, static: set[int], uncapturable: frozenset[Any], record: bool) -> None:
        super().__init__()
        self.ops: list[_Op] = []
        self.nbytes = 0
        self.device_keys: set[int] = set(static)
        self._uncapturable = uncapturable
        self._record = record
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self._record:
            self._check(func, args)
        out = func(*args, **kwargs)
        targets = self._fresh_outputs(func, out, _input_storages(args, kwargs))
        if self._record and (targets or func._schema.is_mutable or _is_collective(func)):
            self.ops.append(_Op(func, tuple(args), dict(kwargs), targets))
        return out

    def _check(self, func: Any, args: Any) -> None:
        if func in self._uncapturable:
            raise UncapturableOpError(f"operator {func} cannot be captured into a graph (graphrun sim)")
        if func in _SYNCING_OPS or _is_masked_index(func, args):
            raise HostSyncError(_SYNC_MESSAGE.format(what=str(func)))

    def _fresh_outputs(self, func: Any, out: Any, inputs: set[int]) -> list[tuple[int, torch.Tensor]]:
        """Outputs that are new storage (not views or in-place results): replay must copy into them.

        Judged by storage, not by the schema: `aten.to` and friends are annotated "may alias" but return a
        fresh tensor when they convert (seen under inference_mode, where `.float()` is `aten.to.dtype`).
        """
        targets: list[tuple[int, torch.Tensor]] = []
        for i, (_, value) in enumerate(_flat_outputs(func, out)):
            if _storage_key(value) in inputs:
                continue
            targets.append((i, value))
            key = _storage_key(value)
            self.device_keys.add(key)
            if key not in self._seen:
                self._seen.add(key)
                self.nbytes += value.untyped_storage().nbytes()
        return targets


def _is_collective(func: Any) -> bool:
    """A collective other than wait_tensor: replay must issue it again (its outputs alias its inputs,
    so neither the schema nor fresh storage would get it recorded)."""
    return func.namespace in _COLLECTIVE_NAMESPACES and func is not _WAIT_TENSOR


def _wait(func: Any, out: Any) -> None:
    """Complete a collective replay just issued: wait on its Work, or on its functional result."""
    if func.namespace == "c10d":
        for value in out if isinstance(out, tuple) else (out,):
            if hasattr(value, "wait"):  # the Work (the tensors come back as they went in)
                value.wait()
        return
    for _, tensor in _flat_outputs(func, out):
        _WAIT_TENSOR(tensor)


def _input_storages(args: Any, kwargs: Any) -> set[int]:
    """Storage addresses of every tensor an op received (lists of tensors included)."""
    keys: set[int] = set()
    for value in (*args, *kwargs.values()):
        items = value if isinstance(value, list | tuple) else (value,)
        keys.update(_storage_key(t) for t in items if isinstance(t, torch.Tensor))
    return keys


def _flat_outputs(func: Any, out: Any) -> list[tuple[bool, torch.Tensor]]:
    """(aliases an input?, tensor) for every tensor an op returned, lists flattened, in schema order."""
    returns = func._schema.returns
    if not returns:  # an op that returns nothing (aten._assert_tensor_metadata in export graphs)
        return []
    values = [out] if len(returns) == 1 else list(out)
    flat: list[tuple[bool, torch.Tensor]] = []
    for ret, value in zip(returns, values, strict=False):
        aliased = ret.alias_info is not None
        items = value if isinstance(value, list | tuple) else [value]
        flat.extend((aliased, v) for v in items if isinstance(v, torch.Tensor))
    return flat


def _is_masked_index(func: Any, args: Any) -> bool:
    if func is not aten.index.Tensor:
        return False
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class _HostSyncGuard(TorchFunctionMode):
    """Raises on Tensor methods that would copy a device tensor to the host."""

    def __init__(self, device_keys: set[int]) -> None:
        super().__init__()
        self._device_keys = device_keys  # shared with the recorder, grows during capture

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        on_device = args and isinstance(args[0], torch.Tensor) and _storage_key(args[0]) in self._device_keys
        if on_device and (func in _SYNCING_METHODS or _is_host_transfer(func, args, kwargs)):
            raise HostSyncError(_SYNC_MESSAGE.format(what=getattr(func, "__name__", str(func))))
        return func(*args, **kwargs)


def _is_host_transfer(func: Any, args: Any, kwargs: Any) -> bool:
    if func is not torch.Tensor.to:
        return False
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(target, str | torch.device) and torch.device(target).type == "cpu"
