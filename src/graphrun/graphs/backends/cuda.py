"""CUDA-graph backend: the only module that touches torch.cuda.CUDAGraph.

All graphs of one backend share one memory pool and one side stream. Rungs are captured largest first,
so each smaller graph reuses the blocks the larger one freed: pool memory stays near the top rung's.
Captures are thread-local, so a background capture and eager calls on other threads can share a device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch


class CudaGraph:
    """A captured torch.cuda.CUDAGraph and the pool memory its capture added."""

    def __init__(self, graph: torch.cuda.CUDAGraph, nbytes: int, label: str) -> None:
        self._graph: torch.cuda.CUDAGraph | None = graph
        self.nbytes = nbytes
        self.replay = _nvtx_wrapped(graph.replay, label) if label else graph.replay

    def release(self) -> None:
        """Drop the graph; its pool blocks return to the shared pool."""
        if self._graph is not None:
            self._graph.reset()
            self._graph = None


class CudaBackend:
    """Capture with torch.cuda.graph into one shared pool, warm up on a side stream."""

    name = "cuda"

    def __init__(self, device: torch.device | str | int | None = None) -> None:
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else _cuda(device)
        with torch.cuda.device(self.device):
            self._pool = torch.cuda.graph_pool_handle()
            self._stream = torch.cuda.Stream(self.device)
        self._pool_bytes = 0

    def warmup(self, body: Callable[[], object], iters: int) -> None:
        """Run `body` on the capture stream, so lazy init (cuBLAS handles, workspaces) happens there."""
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            for _ in range(iters):
                body()
        current.wait_stream(self._stream)
        torch.cuda.synchronize(self.device)

    def estimate_bytes(self, body: Callable[[], object]) -> int:
        """Peak extra allocation of one eager run: what a capture of it will ask the pool for."""
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        body()
        torch.cuda.synchronize(self.device)
        return max(0, torch.cuda.max_memory_allocated(self.device) - base)

    def projected_pool_bytes(self, estimate: int) -> int:
        """The pool is shared and reused, so it grows to the largest single need, not the sum."""
        return max(self._pool_bytes, estimate)

    def capture(self, body: Callable[[], object], label: str = "") -> CudaGraph:
        """Record `body` into the shared pool; CUDA raises on host syncs and uncapturable ops."""
        torch.cuda.synchronize(self.device)
        before = pool_segment_bytes(self._pool, self.device)
        graph = torch.cuda.CUDAGraph()
        previous_stream = torch.cuda.current_stream(self.device)
        try:
            # thread_local: a background capture (runner.py) runs while other threads launch eager work
            # on this device; their calls must neither be captured nor invalidate this capture. This
            # thread's own unsafe calls (a host sync, an allocation outside the pool) still raise.
            with torch.cuda.graph(
                graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"
            ):
                body()
        except BaseException:
            _recover_after_failed_capture(self.device, previous_stream, self._pool)
            # torch 2.11 keeps the pool marked "recording" after a failed capture (ending the routing does
            # not clear it), so later captures go to a fresh pool: correct, only less memory sharing.
            with torch.cuda.device(self.device):
                self._pool = torch.cuda.graph_pool_handle()
            raise
        torch.cuda.synchronize(self.device)
        added = max(0, pool_segment_bytes(self._pool, self.device) - before)
        self._pool_bytes += added
        return CudaGraph(graph, added, label)

    def pool_bytes(self) -> int:
        """Bytes the shared pool grew by over all captures of this backend."""
        return self._pool_bytes

    def synchronize(self) -> None:
        """Wait for this device's queued work."""
        torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def range(self, label: str) -> Iterator[None]:
        """An NVTX range, visible in Nsight Systems."""
        torch.cuda.nvtx.range_push(label)
        try:
            yield
        finally:
            torch.cuda.nvtx.range_pop()


def pool_segment_bytes(pool: tuple[int, int], device: torch.device) -> int:
    """Bytes the caching allocator holds in segments of one graph pool.

    Reading memory_reserved() around a capture does not work: torch.cuda.graph empties the cache on
    entry, which cancels the pool's growth. The allocator snapshot names each segment's pool.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    return sum(
        int(seg["total_size"])
        for seg in torch.cuda.memory_snapshot()
        if tuple(seg.get("segment_pool_id", (0, 0))) == tuple(pool) and seg.get("device") == index
    )


def _nvtx_wrapped(replay: Callable[[], None], label: str) -> Callable[[], None]:
    """replay() inside an NVTX range: ~0.3 us of host time, and replays show up named in Nsight."""
    push, pop = torch._C._nvtx.rangePushA, torch._C._nvtx.rangePop  # the C entry points: no Python frame

    def replay_in_range() -> None:
        push(label)
        try:
            replay()
        finally:
            pop()

    return replay_in_range


def _cuda(device: torch.device | str | int) -> torch.device:
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"CudaBackend needs a cuda device, got {dev}")
    return torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())


def _recover_after_failed_capture(
    device: torch.device, previous_stream: torch.cuda.Stream, pool: tuple[int, int]
) -> None:
    """Leave the process usable after a capture that raised.

    Three hazards, all because CUDAGraph.capture_end raises part-way: torch.cuda.graph's __exit__ ends the
    capture before it restores the stream, so this thread is left on the capture stream; the allocator
    keeps routing this thread's allocations to the graph pool, so the next capture into it fails with
    "already recording to mempool"; and the RNG epilogue never runs, so the default CUDA generator stays
    in capture mode and every later random op fails with "Offset increment outside graph capture". The
    stream is put back, the pool routing ended, and the generator repaired by one trivial capture run to
    completion (its epilogue clears the flag). If that does not hold, raise.
    """
    torch.cuda.set_stream(previous_stream)
    with contextlib.suppress(Exception):
        torch._C._cuda_endAllocateToPool(device.index, pool)
    with contextlib.suppress(Exception):
        torch.cuda.synchronize(device)
    try:
        torch.rand(1, device=device)
        torch.cuda.synchronize(device)
        return
    except RuntimeError:
        pass
    repair = torch.cuda.CUDAGraph()
    scratch = torch.zeros(1, device=device)
    with torch.cuda.graph(repair):
        scratch.add_(1)
    repair.reset()
    torch.cuda.set_stream(previous_stream)
    torch.rand(1, device=device)  # raises if the generator is still poisoned: do not limp on
    torch.cuda.synchronize(device)


class RawGraph:
    """A hand-made CUDA graph, no runner around it: the baseline benchmarks and doctor compare against.

    Warms `body` up on a side stream, captures it once into its own pool; `replay` is the bare
    torch.cuda.CUDAGraph.replay, so timing it measures raw replay with nothing added.
    """

    def __init__(self, body: Callable[[], object], warmup_iters: int = 3) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup_iters):
                body()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        previous_stream = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(self.graph):
                self.output: Any = body()
        except BaseException:
            _recover_after_failed_capture(previous_stream.device, previous_stream, self.graph.pool())
            raise
        torch.cuda.synchronize()
        self.nbytes = pool_segment_bytes(self.graph.pool(), previous_stream.device)
        self.replay = self.graph.replay

    def release(self) -> None:
        """Free the graph and its pool."""
        self.graph.reset()
