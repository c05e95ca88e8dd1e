"""OrtRunner on the CPU onnxruntime: outputs == the torch module, padding to rungs, IOBinding buffers
reused across calls, the lock under threads, the start-up probe, eager fallback said once, input errors.

Tolerances: float32 outputs of ORT's CPU kernels vs torch's, rtol 1e-5 and atol 1e-5 (the same math in
a different order: measured differences are ~1e-7).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
import torch
from ort_models import reshape_by_four, two_inputs_example, with_fixed_input
from prometheus_client import CollectorRegistry

from graphrun.errors import BackendUnavailableError, ConfigError, GraphInputError
from graphrun.graphs.status import CallFallback, CaptureFailure
from graphrun.ort import OrtRunner
from graphrun.ort.sessions import has_cuda_ep

RTOL, ATOL = 1e-5, 1e-5


def _runner(path: Path, **options: object) -> OrtRunner:
    options.setdefault("sizes", [1, 2, 4])
    options.setdefault("backend", "binding")
    return OrtRunner(path, two_inputs_example(), registry=CollectorRegistry(), **options)  # type: ignore[arg-type]


def _assert_matches(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=RTOL, atol=ATOL)


def test_outputs_equal_the_torch_module_at_every_batch_size(two_inputs_model) -> None:
    module, path = two_inputs_model
    runner = _runner(path)
    for batch in range(1, 7):  # 1..4 on rungs (3 padded), 5 and 6 above the top rung: eager
        x, ids = two_inputs_example(batch)
        with torch.no_grad():
            want = module(x, ids)
        _assert_matches(runner(x, ids), want)
    assert runner.stats.num_replayed == 4
    assert runner.stats.eager_fallback == {CallFallback.ABOVE_TOP_RUNG: 2}


def test_every_rung_passes_the_probe_and_status_reads_like_graphrunners(two_inputs_model) -> None:
    _, path = two_inputs_model
    status = _runner(path).status()
    assert status.backend == "ort-binding"
    assert [(r.size, r.captured, r.padded, r.reason) for r in status] == [
        (1, True, True, None),
        (2, True, True, None),
        (4, True, True, None),
    ]
    assert all(r.nbytes > 0 for r in status)
    assert "3 of 3 sizes captured" in str(status)


def test_a_batch_is_padded_to_its_rung_and_sliced_back(two_inputs_model) -> None:
    _, path = two_inputs_model
    runner = _runner(path)
    x, ids = two_inputs_example(3)
    mixed, doubled = runner(x, ids)
    assert runner.rung_for(3) == 4 and mixed.shape == (3, 4) and doubled.shape == (3, 8)
    buffers = runner.rung_binding(4)
    assert torch.equal(buffers.inputs[0][3], x[2]) and torch.equal(buffers.inputs[1][3], ids[2])  # repeat
    assert torch.equal(buffers.outputs[1][:3], doubled)
    assert runner.stats.num_padded_rows == 1 and runner.stats.num_graph_rows == 3


def test_pad_value_fills_the_rows_between_batch_and_rung(two_inputs_model) -> None:
    _, path = two_inputs_model
    runner = _runner(path, pad=0)
    runner(*two_inputs_example(3))
    buffers = runner.rung_binding(4)
    assert torch.equal(buffers.inputs[0][3], torch.zeros(8))
    assert torch.equal(buffers.inputs[1][3], torch.zeros(3, dtype=torch.int64))


def test_pad_forbid_runs_other_sizes_eager(two_inputs_model) -> None:
    module, path = two_inputs_model
    runner = _runner(path, pad="forbid")
    x, ids = two_inputs_example(3)
    with torch.no_grad():
        _assert_matches(runner(x, ids), module(x, ids))
    assert runner.rung_for(3) is None and runner.rung_for(4) == 4
    assert runner.stats.eager_fallback == {CallFallback.PADDING_FORBIDDEN: 1}


def test_iobinding_reuses_the_same_buffers_across_calls(two_inputs_model) -> None:
    _, path = two_inputs_model
    runner = _runner(path)
    buffers = runner.rung_binding(4)
    inputs, outputs = buffers.inputs, buffers.outputs
    pointers = [t.data_ptr() for t in (*inputs, *outputs)]
    for batch in (4, 3, 4):
        mixed, doubled = runner(*two_inputs_example(batch))
        # the call's outputs are views of the rung's output buffers, and ORT wrote into exactly those
        assert mixed.data_ptr() == outputs[0].data_ptr() and doubled.data_ptr() == outputs[1].data_ptr()
        ort_outputs = buffers.io_binding.get_outputs()
        assert [v.data_ptr() for v in ort_outputs] == [t.data_ptr() for t in outputs]
    assert runner.rung_binding(4) is buffers
    assert buffers.inputs is inputs and buffers.outputs is outputs
    assert [t.data_ptr() for t in (*inputs, *outputs)] == pointers


def test_outputs_alias_the_buffers_until_the_next_call_unless_cloned(two_inputs_model) -> None:
    _, path = two_inputs_model
    aliasing, cloning = _runner(path), _runner(path, clone_outputs=True)
    first_x, first_ids = two_inputs_example(4)
    second = two_inputs_example(40)[0][:4], two_inputs_example(40)[1][:4]
    kept_alias, kept_clone = aliasing(first_x, first_ids)[1], cloning(first_x, first_ids)[1]
    aliasing(*second), cloning(*second)
    assert torch.equal(kept_alias, second[0] * 2)  # overwritten by the second call
    assert torch.equal(kept_clone, first_x * 2)


def test_static_inputs_are_the_buffers_and_skip_the_copy(two_inputs_model) -> None:
    module, path = two_inputs_model
    runner = _runner(path)
    x_rows, ids_rows = runner.static_inputs(2)
    assert x_rows.data_ptr() == runner.rung_binding(2).inputs[0].data_ptr()
    x, ids = two_inputs_example(2)
    x_rows.copy_(x)
    ids_rows.copy_(ids)
    with torch.no_grad():
        _assert_matches(runner(x_rows, ids_rows), module(x, ids))
    with pytest.raises(GraphInputError, match="no bound rung"):
        runner.static_inputs(9)


def test_concurrent_calls_from_threads_each_get_their_own_results(two_inputs_model) -> None:
    module, path = two_inputs_model
    runner = _runner(path, clone_outputs=True)
    failures: list[str] = []

    def worker(seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for step in range(150):
            batch = 1 + (seed + step) % 4
            x = torch.randn(batch, 8, generator=generator)
            ids = torch.randint(0, 16, (batch, 3), generator=generator)
            with torch.no_grad():
                want = module(x, ids)
            try:
                got = runner(x, ids)
            except Exception as error:
                failures.append(f"thread {seed} step {step}: {error!r}")
                continue
            if not all(torch.allclose(g, w, rtol=RTOL, atol=ATOL) for g, w in zip(got, want, strict=True)):
                failures.append(f"thread {seed} step {step} batch {batch}: wrong result")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert runner.stats.num_replayed == 600


def test_a_model_whose_rows_couple_serves_exact_sizes_only(batch_mean_model) -> None:
    module, path = batch_mean_model
    runner = OrtRunner(
        path, torch.randn(4, 6), sizes=[1, 2, 4], backend="binding", registry=CollectorRegistry()
    )
    top = runner.status()[-1]
    assert top.captured and not top.padded and top.reason is CaptureFailure.PADDING_MISMATCH
    x = torch.randn(3, 6)
    torch.testing.assert_close(runner(x), module(x), rtol=RTOL, atol=ATOL)
    assert runner.stats.eager_fallback == {CallFallback.PADDING_MISMATCH: 1}
    x4 = torch.randn(4, 6)
    torch.testing.assert_close(runner(x4), module(x4), rtol=RTOL, atol=ATOL)
    assert runner.stats.num_replayed == 1


def test_a_rung_that_fails_at_start_up_runs_eager_and_the_others_stay_bound(tmp_path: Path) -> None:
    path = reshape_by_four(tmp_path / "reshape.onnx")
    registry = CollectorRegistry()
    # pad="forbid": no padded check, whose eager reference would fail at odd sizes too
    runner = OrtRunner(
        path, torch.randn(4, 2), sizes=[1, 2, 4], backend="binding", pad="forbid", registry=registry
    )
    statuses = {r.size: r for r in runner.status()}
    assert not statuses[1].captured and statuses[1].reason is CaptureFailure.ERROR
    assert "Reshape" in statuses[1].detail or "reshape" in statuses[1].detail.lower()
    assert statuses[2].captured and statuses[4].captured
    x = torch.randn(2, 2)
    torch.testing.assert_close(runner(x), x)
    value = registry.get_sample_value(
        "graphrun_cuda_graph_capture_failed_at_init_total", {"runner": runner.name, "reason": "error"}
    )
    assert value == 1


def test_a_non_batched_input_is_copied_whole(tmp_path: Path) -> None:
    path = with_fixed_input(tmp_path / "fixed.onnx")
    w = torch.tensor([1.0, 2.0, 3.0])
    runner = OrtRunner(
        path, (torch.randn(4, 3), w), sizes=[2, 4], backend="binding", registry=CollectorRegistry()
    )
    x = torch.randn(3, 3)
    torch.testing.assert_close(runner(x, w), x * w)
    torch.testing.assert_close(runner(x, w=w * 2), x * w * 2)
    with pytest.raises(GraphInputError, match=r"input 'w' has shape \(4,\)"):
        runner(x, torch.ones(4))


@pytest.mark.skipif(has_cuda_ep(), reason="onnxruntime here has the CUDA EP")
def test_without_the_cuda_ep_auto_runs_eager_and_says_so_once(two_inputs_model, caplog) -> None:
    module, path = two_inputs_model
    with caplog.at_level(logging.INFO, logger="graphrun.ort"):
        runner = _runner(path, backend="auto")
        for batch in (1, 3, 4, 9):
            x, ids = two_inputs_example(batch)
            with torch.no_grad():
                _assert_matches(runner(x, ids), module(x, ids))
    said = [r for r in caplog.records if "CUDAExecutionProvider" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert runner.reason is not None and runner.reason.startswith("no_graph_backend: onnxruntime has no")
    assert all(not r.captured and r.reason is CaptureFailure.NO_GRAPH_BACKEND for r in runner.status())
    assert runner.status().backend == "ort-eager"
    assert runner.stats.eager_fallback == {CallFallback.RUNG_NOT_CAPTURED: 3, CallFallback.ABOVE_TOP_RUNG: 1}
    assert runner.stats.capture_failed == {CaptureFailure.NO_GRAPH_BACKEND: 3}


def test_cpu_inputs_under_auto_run_eager_even_with_the_cuda_ep(two_inputs_model) -> None:
    _, path = two_inputs_model
    runner = _runner(path, backend="auto")
    assert runner.placement.reason is CaptureFailure.NO_GRAPH_BACKEND and runner.rung_for(1) is None


def test_eager_backend_counts_every_call_as_mode_none(two_inputs_model) -> None:
    module, path = two_inputs_model
    runner = _runner(path, backend="eager")
    x, ids = two_inputs_example(2)
    with torch.no_grad():
        _assert_matches(runner(x, ids), module(x, ids))
    assert runner.stats.eager_fallback == {CallFallback.MODE_NONE: 1}
    assert runner.status()[0].reason is CaptureFailure.MODE_NONE


def test_cuda_graph_backend_is_refused_for_cpu_inputs(two_inputs_model) -> None:
    _, path = two_inputs_model
    with pytest.raises(ConfigError, match="CPU tensors"):
        _runner(path, backend="cuda_graph")


@pytest.mark.skipif(has_cuda_ep() or not torch.cuda.is_available(), reason="needs CUDA without the CUDA EP")
def test_cuda_graph_backend_without_the_cuda_ep_names_the_package(two_inputs_model) -> None:
    _, path = two_inputs_model
    example = tuple(t.cuda() for t in two_inputs_example())
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        OrtRunner(path, example, backend="cuda_graph", registry=CollectorRegistry())


def test_inputs_by_name_and_by_position_give_the_same_result(two_inputs_model) -> None:
    _, path = two_inputs_model
    runner = _runner(path, clone_outputs=True)
    x, ids = two_inputs_example(2)
    _assert_matches(runner(ids=ids, x=x), runner(x, ids))
    _assert_matches(runner(x, ids=ids), runner(x, ids))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r, x, ids: r(x, ids, x), "got 3 positional inputs, the model takes 2"),
        (lambda r, x, ids: r(x, idz=ids), r"unknown input name 'idz'; the model's inputs are \['x', 'ids'\]"),
        (lambda r, x, ids: r(x), r"missing input\(s\) \['ids'\]"),
        (lambda r, x, ids: r(x, ids, x=x), "given both by position and by name"),
        (
            lambda r, x, ids: r(x.double(), ids),
            "input 'x' has dtype torch.float64, the model takes torch.float32",
        ),
        (lambda r, x, ids: r(x, ids.int()), "input 'ids' has dtype torch.int32, the model takes torch.int64"),
        (lambda r, x, ids: r(x[:, :5], ids), r"input 'x' has shape \(2, 5\), the runner takes \(batch, 8\)"),
        (lambda r, x, ids: r(x, ids[:1]), "batched inputs disagree on the batch size"),
        (lambda r, x, ids: r(x.numpy(), ids), "input 'x' must be a torch.Tensor, got ndarray"),
        (lambda r, x, ids: r(x[:0], ids[:0]), "batch size must be >= 1"),
    ],
)
def test_bad_inputs_raise_naming_the_input_and_the_fix(two_inputs_model, call, message) -> None:
    _, path = two_inputs_model
    runner = _runner(path)
    x, ids = two_inputs_example(2)
    with pytest.raises(GraphInputError, match=message):
        call(runner, x, ids)
    assert runner.stats.num_replayed == 0 and runner.stats.eager_fallback == {}


def test_bad_construction_is_refused_naming_the_value(two_inputs_model) -> None:
    _, path = two_inputs_model
    x, ids = two_inputs_example()
    with pytest.raises(ConfigError, match=r"example for input 'ids' has dtype torch\.int32"):
        OrtRunner(path, (x, ids.int()), registry=CollectorRegistry())
    with pytest.raises(ConfigError, match="no example for model input"):
        OrtRunner(path, (x,), registry=CollectorRegistry())
    with pytest.raises(ConfigError, match="backend must be one of"):
        OrtRunner(path, (x, ids), backend="tensorrt", registry=CollectorRegistry())
    with pytest.raises(ConfigError, match="pad must be"):
        OrtRunner(path, (x, ids), pad="mirror", registry=CollectorRegistry())


def test_metrics_are_exposed_under_the_runner_name(two_inputs_model) -> None:
    _, path = two_inputs_model
    registry = CollectorRegistry()
    runner = OrtRunner(
        path, two_inputs_example(), sizes=[4], backend="binding", registry=registry, name="stage"
    )
    runner(*two_inputs_example(3))
    runner(*two_inputs_example(5))
    labels = {"runner": "stage"}
    assert registry.get_sample_value("graphrun_cuda_graph_replayed_total", labels) == 1
    assert registry.get_sample_value("graphrun_cuda_graph_padding_ratio", labels) == pytest.approx(0.25)
    fallback = {"runner": "stage", "reason": "above_top_rung"}
    assert registry.get_sample_value("graphrun_cuda_graph_eager_fallback_total", fallback) == 1
