"""OrtRunner on a GPU: CUDA graphs per rung through ORT's CUDA EP (onnxruntime-gpu), and the CPU
onnxruntime serving CUDA tensors. Skipped without CUDA (conftest) and, for the graph tests, without the
CUDA EP. Not yet run when written: the README says what has been validated where.

Tolerance: float32 on the CUDA EP (which may use TF32 matmuls) vs torch: rtol 1e-3, atol 1e-3.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from graphrun.graphs.status import CallFallback, CaptureFailure
from graphrun.ort import OrtRunner, export_onnx
from graphrun.ort.sessions import has_cuda_ep

pytestmark = pytest.mark.gpu
needs_cuda_ep = pytest.mark.skipif(not has_cuda_ep(), reason="onnxruntime has no CUDAExecutionProvider")
RTOL, ATOL = 1e-3, 1e-3
SIZES = [1, 2, 4, 8]


class LaunchBound(torch.nn.Module):
    """24 small layers: at small batch, launches cost more than the math, which is what graphs remove."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(64, 64) for _ in range(24))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.nn.functional.gelu(layer(x)) + x
        return x


@pytest.fixture(scope="module")
def launch_bound(tmp_path_factory: pytest.TempPathFactory) -> tuple[LaunchBound, Path]:
    torch.manual_seed(0)
    module = LaunchBound().eval()
    path = tmp_path_factory.mktemp("onnx_gpu") / "launch_bound.onnx"
    export_onnx(module, torch.randn(4, 64), path, input_names=["x"])
    return module.cuda(), path


@needs_cuda_ep
def test_every_rung_is_captured_and_equals_torch(launch_bound, capfd) -> None:
    module, path = launch_bound
    runner = OrtRunner(path, torch.randn(4, 64, device="cuda"), sizes=SIZES, registry=CollectorRegistry())
    assert runner.status().backend == "ort-cuda-graph", runner.reason
    assert [r.captured and r.padded for r in runner.status()] == [True] * len(SIZES), str(runner.status())
    for batch in range(1, 11):  # 9 and 10: above the top rung, eager
        x = torch.randn(batch, 64, device="cuda")
        with torch.no_grad():
            torch.testing.assert_close(runner(x), module(x), rtol=RTOL, atol=ATOL)
    assert runner.stats.num_replayed == 8
    assert runner.stats.eager_fallback == {CallFallback.ABOVE_TOP_RUNG: 2}
    # ORT turns graphs off for a model it cannot capture with only a warning (sessions.py, rule 2)
    assert "cuda graph" not in capfd.readouterr().err.lower()


@needs_cuda_ep
def test_device_buffers_keep_their_addresses_and_ort_writes_into_them(launch_bound) -> None:
    _, path = launch_bound
    runner = OrtRunner(path, torch.randn(4, 64, device="cuda"), sizes=SIZES, registry=CollectorRegistry())
    buffers = runner.rung_binding(8)
    pointers = [t.data_ptr() for t in (*buffers.inputs, *buffers.outputs)]
    for batch in (8, 5, 8, 6):
        out = runner(torch.randn(batch, 64, device="cuda"))
        assert out.data_ptr() == buffers.outputs[0].data_ptr()
        assert [v.data_ptr() for v in buffers.io_binding.get_outputs()] == [buffers.outputs[0].data_ptr()]
    assert [t.data_ptr() for t in (*buffers.inputs, *buffers.outputs)] == pointers


@needs_cuda_ep
def test_replays_on_fresh_inputs_read_the_new_values(launch_bound) -> None:
    module, path = launch_bound
    runner = OrtRunner(path, torch.randn(4, 64, device="cuda"), sizes=[4], registry=CollectorRegistry())
    for _ in range(5):  # a graph that baked in the probe's data would repeat one answer
        x = torch.randn(4, 64, device="cuda")
        with torch.no_grad():
            torch.testing.assert_close(runner(x), module(x), rtol=RTOL, atol=ATOL)


@needs_cuda_ep
def test_concurrent_calls_from_threads_on_cuda_graphs(launch_bound) -> None:
    import threading

    module, path = launch_bound
    runner = OrtRunner(
        path, torch.randn(4, 64, device="cuda"), sizes=SIZES, clone_outputs=True, registry=CollectorRegistry()
    )
    failures: list[str] = []

    def worker(seed: int) -> None:
        generator = torch.Generator(device="cuda").manual_seed(seed)
        for step in range(50):
            x = torch.randn(1 + (seed + step) % 8, 64, device="cuda", generator=generator)
            with torch.no_grad():
                want = module(x)
            if not torch.allclose(runner(x), want, rtol=RTOL, atol=ATOL):
                failures.append(f"thread {seed} step {step}")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


@needs_cuda_ep
def test_graph_replay_is_faster_than_the_eager_session(launch_bound) -> None:
    _, path = launch_bound
    example = torch.randn(4, 64, device="cuda")
    graphs = OrtRunner(path, example, sizes=[8], registry=CollectorRegistry())
    eager = OrtRunner(path, example, sizes=[8], backend="eager", registry=CollectorRegistry())
    x = torch.randn(8, 64, device="cuda")

    def mean_seconds(runner: OrtRunner) -> float:
        for _ in range(10):
            runner(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(100):
            runner(x)
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / 100

    graph_s, eager_s = mean_seconds(graphs), mean_seconds(eager)
    assert graph_s < eager_s, f"graph {graph_s * 1e6:.0f} us vs eager {eager_s * 1e6:.0f} us per call"


@pytest.mark.skipif(has_cuda_ep(), reason="onnxruntime here has the CUDA EP")
def test_the_cpu_package_serves_cuda_tensors_eager_on_host_copies(launch_bound) -> None:
    module, path = launch_bound
    runner = OrtRunner(path, torch.randn(4, 64, device="cuda"), sizes=SIZES, registry=CollectorRegistry())
    assert runner.placement.reason is CaptureFailure.NO_GRAPH_BACKEND
    x = torch.randn(3, 64, device="cuda")
    out = runner(x)
    assert out.device.type == "cuda"
    with torch.no_grad():
        torch.testing.assert_close(out, module(x), rtol=1e-4, atol=1e-4)
