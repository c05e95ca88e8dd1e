"""`graphrun doctor`: can this machine capture graphs, and what does a graph save here?

Reports versions (Python, torch, CUDA, cuDNN, NVIDIA driver) and the GPU, captures a small probe graph
and checks its replay on new input against eager, and measures the cost of one kernel launch eagerly
versus inside a graph replay. That ratio is the whole case for graphs: a small-batch step is hundreds
of microsecond-long kernels, so launch overhead, not arithmetic, sets its speed. Without CUDA it probes
the sim backend instead, so the report still says whether the runtime works.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from prometheus_client import CollectorRegistry

from graphrun.graphs import GraphRunner
from graphrun.graphs.verify import mismatch
from graphrun.version import __version__

NO_CUDA_NOTE = "no CUDA device: graphs cannot be captured here; the sim backend is used for tests"
NUM_LAUNCHES = 200  # tiny elementwise kernels per timed chain
NUM_REPEATS = 25  # timed chains per mode; the median is reported
NVIDIA_SMI_TIMEOUT_S = 10.0
PROBE_SEED = 0


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """The current CUDA device."""

    name: str
    compute_capability: str
    total_memory_gib: float
    free_memory_gib: float
    num_devices: int


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Whether a small graph captured and replayed new input to the same result as eager."""

    backend: str
    ok: bool
    detail: str
    max_abs_diff: float | None = None


@dataclass(frozen=True, slots=True)
class LaunchCost:
    """Microseconds per kernel launch, eager versus inside one graph replay (medians over repeats)."""

    num_launches: int
    num_repeats: int
    eager_us_per_launch: float
    graph_us_per_launch: float
    ratio: float  # eager over graph


@dataclass(frozen=True, slots=True)
class DoctorReport:
    """Everything doctor found; printed as key: value lines or as one JSON object."""

    graphrun: str
    python: str
    torch: str
    torch_cuda: str | None
    cudnn: str | None
    nvidia_driver: str | None
    cuda_available: bool
    device: DeviceInfo | None
    probe: ProbeResult
    launch_cost: LaunchCost | None
    launch_cost_skipped: str | None


def run_doctor(as_json: bool) -> int:
    """Collect and print the report; 0 if the probe passed (with or without CUDA), 1 if it failed."""
    report = collect_report()
    if as_json:
        print(json.dumps(dataclasses.asdict(report)))
    else:
        for line in report_lines(report):
            print(line)
    return 0 if report.probe.ok else 1


def collect_report() -> DoctorReport:
    """Versions, device, probe and launch cost; the CUDA parts only where a device is visible."""
    cuda = torch.cuda.is_available()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    probe = probe_cuda() if cuda else probe_sim()
    cost, skipped = launch_cost_or_reason(cuda)
    return DoctorReport(
        graphrun=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        cudnn=cudnn_version_string(cudnn) if cudnn is not None else None,
        nvidia_driver=nvidia_driver_version(),
        cuda_available=cuda,
        device=device_info() if cuda else None,
        probe=probe,
        launch_cost=cost,
        launch_cost_skipped=skipped,
    )


def launch_cost_or_reason(cuda: bool) -> tuple[LaunchCost | None, str | None]:
    """The launch-cost measurement, or None and why it was skipped."""
    if not cuda:
        return None, "no CUDA device: launch cost eager vs in a graph is measured on a GPU only"
    try:
        return measure_launch_cost(), None
    except Exception as exc:  # a broken measurement must not hide the rest of the report
        return None, f"measurement failed: {exc}"


def cudnn_version_string(version: int) -> str:
    """cuDNN's integer version as major.minor.patch: 91900 -> 9.19.0 (cuDNN 9), 8902 -> 8.9.2 (cuDNN 8)."""
    major_unit = 10000 if version >= 90000 else 1000
    return f"{version // major_unit}.{version % major_unit // 100}.{version % 100}"


def nvidia_driver_version() -> str | None:
    """The driver version from nvidia-smi, or None when it is absent, hangs or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if lines else None


def device_info() -> DeviceInfo:
    """Name, compute capability and memory of the current CUDA device."""
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    return DeviceInfo(
        name=props.name,
        compute_capability=f"{props.major}.{props.minor}",
        total_memory_gib=round(total / 2**30, 2),
        free_memory_gib=round(free / 2**30, 2),
        num_devices=torch.cuda.device_count(),
    )


def probe_cuda() -> ProbeResult:
    """Capture a few ops (matmul, add, relu, sin) with RawGraph, replay on new input, compare with eager."""
    from graphrun.graphs.backends.cuda import RawGraph  # imported here: only meaningful with CUDA

    gen = torch.Generator().manual_seed(PROBE_SEED)
    x = torch.randn(64, 64, generator=gen).cuda()  # static input the graph reads
    w = torch.randn(64, 64, generator=gen).cuda()

    def body() -> torch.Tensor:
        return torch.relu(x @ w + 0.5).sin()

    try:
        graph = RawGraph(body)
        out = graph.output  # the graph's static output: rewritten by every replay
        assert isinstance(out, torch.Tensor)
        first = out.clone()
        x.copy_(torch.randn(64, 64, generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        got, want = out.clone(), body()
        graph.release()
    except Exception as exc:
        return ProbeResult("cuda", False, f"capture or replay raised: {exc}")
    if torch.equal(got, first):
        return ProbeResult("cuda", False, "replay ignored the new input (output unchanged)")
    return _compare("cuda", got, want, "RawGraph of 4 ops on (64, 64) fp32: replay on new input == eager")


def probe_sim() -> ProbeResult:
    """Run a GraphRunner on the sim backend over a tiny MLP: every rung captured, a padded call == eager."""
    from graphrun.demo import make_mlp

    model = make_mlp(2, 16, torch.device("cpu"), torch.float32, PROBE_SEED)
    gen = torch.Generator().manual_seed(PROBE_SEED)
    try:
        runner = GraphRunner(
            model,
            (torch.randn(4, 16, generator=gen),),
            sizes=(1, 2, 4),
            backend="sim",
            name="doctor-probe",
            registry=CollectorRegistry(),
        )
        x = torch.randn(3, 16, generator=gen)  # 3 pads to rung 4
        got, want = runner(x).clone(), model(x)
    except Exception as exc:
        return ProbeResult("sim", False, f"runner raised: {exc}")
    eager = [str(s) for s in runner.status() if not s.captured]
    if eager:
        return ProbeResult("sim", False, "rungs not captured: " + "; ".join(eager))
    if runner.stats.num_replayed != 1:
        return ProbeResult("sim", False, "the call at batch 3 did not replay a graph")
    return _compare("sim", got, want, "sim GraphRunner, tiny MLP: 3/3 rungs captured, padded replay == eager")


def _compare(backend: str, got: torch.Tensor, want: torch.Tensor, ok_detail: str) -> ProbeResult:
    """ok when the replayed output matches eager within the dtype tolerance; the max abs diff either way."""
    diff = float((got.double() - want.double()).abs().max())
    problem = mismatch(got, want)
    if problem is not None:
        return ProbeResult(backend, False, f"replay differs from eager: {problem}", diff)
    return ProbeResult(backend, True, ok_detail, diff)


def measure_launch_cost(num_launches: int = NUM_LAUNCHES, num_repeats: int = NUM_REPEATS) -> LaunchCost:
    """Time a chain of tiny elementwise kernels eagerly and as one graph replay; per launch, medians."""
    from graphrun.graphs.backends.cuda import RawGraph

    x = torch.rand(256, device="cuda") + 0.5  # small and non-zero: kernels are pure launch overhead

    def chain() -> torch.Tensor:
        y = x
        for _ in range(num_launches // 2):
            y = y * 1.0001 + 0.0001  # two kernels: mul, add
        return y

    graph = RawGraph(chain)
    try:
        eager_s = _median_seconds(chain, num_repeats)
        graph_s = _median_seconds(graph.replay, num_repeats)
    finally:
        graph.release()
    launches = 2 * (num_launches // 2)
    eager_us, graph_us = eager_s / launches * 1e6, graph_s / launches * 1e6
    return LaunchCost(
        launches, num_repeats, round(eager_us, 3), round(graph_us, 3), round(eager_us / graph_us, 2)
    )


def _median_seconds(call: Callable[[], object], repeats: int) -> float:
    """Median synchronised wall time of `call`, after a few untimed warm-up runs."""
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report_lines(report: DoctorReport) -> list[str]:
    """The report as aligned `key: value` lines."""
    dev = report.device
    cost = report.launch_cost
    rows: list[tuple[str, object]] = [
        ("graphrun", report.graphrun),
        ("python", report.python),
        ("torch", report.torch),
        ("torch CUDA", report.torch_cuda or "none (CPU build of torch)"),
        ("cuDNN", report.cudnn or "none"),
        ("NVIDIA driver", report.nvidia_driver or "not found (no nvidia-smi)"),
        ("CUDA available", "yes" if report.cuda_available else NO_CUDA_NOTE),
    ]
    if dev is not None:
        rows += [
            ("GPU", f"{dev.name} (1 of {dev.num_devices})"),
            ("compute capability", dev.compute_capability),
            ("GPU memory", f"{dev.total_memory_gib:.1f} GiB total, {dev.free_memory_gib:.1f} GiB free"),
        ]
    probe = report.probe
    diff = f" (max abs diff {probe.max_abs_diff:.2e})" if probe.max_abs_diff is not None else ""
    rows.append((f"probe ({probe.backend})", f"{'ok' if probe.ok else 'FAILED'}: {probe.detail}{diff}"))
    if cost is not None:
        rows += [
            ("launch, eager", f"{cost.eager_us_per_launch:.2f} us per kernel"),
            ("launch, in a graph", f"{cost.graph_us_per_launch:.2f} us per kernel"),
            (
                "launch ratio",
                f"{cost.ratio:.1f}x (median of {cost.num_repeats} chains of {cost.num_launches})",
            ),
        ]
    else:
        rows.append(("launch cost", f"skipped ({report.launch_cost_skipped})"))
    width = max(len(key) for key, _ in rows)
    return [f"{key:<{width}} : {value}" for key, value in rows]
