"""Pipelines with OrtRunner stages (CPU onnxruntime): the example policy exported one .onnx file per stage
acts like the torch policy; GraphRunner and OrtRunner stages mix; an ORT stage that fails its start-up
probe runs eager alone, counted once per rung with its stage label and said in one INFO line.

Tolerance: graphs/verify.py's float32 default (rtol 1e-4, atol 1e-5) on the action chunk after all the
denoising steps; measured differences are ~1e-7 (the same float32 math in ORT's CPU kernels).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="graphrun[onnx] is not installed")
pytest.importorskip("onnxscript", reason="graphrun[onnx] is not installed")

from graphrun import ExamplePolicy, ExamplePolicyConfig, GraphRunner, Pipeline, Stage, StageTier
from graphrun.errors import ConfigError
from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.status import CaptureFailure
from graphrun.graphs.verify import mismatch
from graphrun.ort import OrtOptions, OrtRunner
from graphrun.ort.sessions import has_cuda_ep
from graphrun.pipeline.stage import StageRunner
from metric_value import value

BOUND = OrtOptions(backend="binding")  # the rung path (buffers, IOBinding, probe) without graphs: CPU
SIM = RunnerOptions(backend="sim")
STAGES = ("prefix", "expert")


@pytest.fixture(scope="module")
def policy():
    return ExamplePolicy(ExamplePolicyConfig.tiny(batch_sizes=(1, 2)))


@pytest.fixture(scope="module")
def folder(policy, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("policy_onnx")
    policy.export_onnx(target)
    return target


def test_export_writes_one_file_per_stage_with_named_inputs(policy, folder):
    import onnx

    assert sorted(p.name for p in folder.iterdir()) == ["expert.onnx", "prefix.onnx"]
    names = {s: [i.name for i in onnx.load(str(folder / f"{s}.onnx")).graph.input] for s in STAGES}
    assert names == {"prefix": ["images", "tokens", "state"], "expert": ["kv", "x", "t"]}


def test_ort_runner_satisfies_the_stage_protocol(policy, folder, registry):
    pipe = policy.pipeline(BOUND, onnx_folder=folder, registry=registry)
    for stage in pipe.stages:
        assert isinstance(stage.runner, OrtRunner) and isinstance(stage.runner, StageRunner)
        assert stage.runner.status().backend == "ort-binding"


@pytest.mark.parametrize("batch", [1, 2, 3])  # 3: above the top rung, both stages eager for that act
def test_an_ort_pipeline_acts_like_the_torch_policy(policy, folder, registry, batch):
    pipe = policy.pipeline(BOUND, onnx_folder=folder, registry=registry)
    assert [pipe.tier(s) for s in STAGES] == [StageTier.GRAPH, StageTier.GRAPH]
    obs = policy.observation(batch, seed=batch)
    with torch.no_grad():
        kv = policy.prefix(obs.images, obs.tokens, obs.state)
        t = torch.full((batch, 1), 0.3)
        assert mismatch(pipe.call("prefix", obs.images, obs.tokens, obs.state), kv) is None
        assert mismatch(pipe.call("expert", kv, obs.noise, t), policy.expert(kv, obs.noise, t)) is None
    assert mismatch(pipe.act(obs), policy.act_eager(obs)) is None
    replays = value(registry, "graphrun_cuda_graph_replayed_total", runner="example.expert", stage="expert",
                    model="example")  # fmt: skip
    assert replays == (0 if batch == 3 else 1 + policy.config.num_steps)


def test_the_prefix_cache_keeps_copies_of_ort_outputs(policy, folder, registry):
    pipe = policy.pipeline(BOUND, onnx_folder=folder, registry=registry)
    a = policy.observation(1, seed=1, id="a")
    first = pipe.act(a)
    pipe.act(policy.observation(1, seed=2, id="b"))  # overwrites the prefix runner's buffers
    assert torch.equal(pipe.act(a), first)
    assert value(registry, "graphrun_pipeline_cache_hits_total", model="example", stage="prefix") == 1


def test_graph_runner_and_ort_runner_stages_mix(policy, folder, registry):
    pipe = policy.pipeline(SIM, stage_options={"expert": BOUND}, onnx_folder=folder, registry=registry)
    assert isinstance(pipe["prefix"].runner, GraphRunner) and isinstance(pipe["expert"].runner, OrtRunner)
    assert [pipe.tier(s) for s in STAGES] == [StageTier.GRAPH, StageTier.GRAPH]
    obs = policy.observation(2, seed=4)
    assert mismatch(pipe.act(obs), policy.act_eager(obs)) is None
    for stage, runs in (("prefix", 1), ("expert", policy.config.num_steps)):
        labels = {"runner": f"example.{stage}", "stage": stage, "model": "example"}
        assert value(registry, "graphrun_cuda_graph_replayed_total", **labels) == runs


@pytest.mark.skipif(has_cuda_ep(), reason="onnxruntime here has the CUDA EP")
def test_without_the_cuda_ep_ort_stages_run_eager_not_as_failures(policy, folder, registry, caplog):
    with caplog.at_level(logging.INFO, logger="graphrun"):
        pipe = policy.pipeline(OrtOptions(), onnx_folder=folder, registry=registry)
    assert {pipe.tier(s) for s in STAGES} == {StageTier.EAGER}
    assert all(pipe.report(s).reason is CaptureFailure.NO_GRAPH_BACKEND for s in STAGES)
    assert not any(pipe.report(s).failed for s in STAGES)
    assert not any("runs eager for" in r.getMessage() for r in caplog.records)
    said = [r for r in caplog.records if "CUDAExecutionProvider" in r.getMessage()]
    assert len(said) == len(STAGES)  # once per runner, at INFO
    obs = policy.observation(1, seed=5)
    assert mismatch(pipe.act(obs), policy.act_eager(obs)) is None


def test_ort_stage_options_without_the_files_are_refused(policy, tmp_path, registry):
    with pytest.raises(ConfigError, match="no onnx_folder was given"):
        policy.pipeline(stage_options={"expert": BOUND}, registry=registry)
    with pytest.raises(
        ConfigError, match=r"stage 'prefix': no .*prefix\.onnx; write it with ExamplePolicy\.export_onnx"
    ):
        policy.pipeline(BOUND, onnx_folder=tmp_path, registry=registry)


def test_a_bfloat16_policy_is_refused_at_export(tmp_path):
    policy = ExamplePolicy(ExamplePolicyConfig.tiny(), dtype=torch.bfloat16)
    with pytest.raises(ConfigError, match=r"bfloat16 policy cannot run on OrtRunner \(IOBinding"):
        policy.export_onnx(tmp_path)


# ----- an ORT stage that fails at start-up ---------------------------------------------------------------


def _reshape_by_eight(path: Path) -> Path:
    """y = x for x (batch, 2), through Reshape to (8, -1) and back: runs at batch 4k only (8 values), so
    the rungs 1 and 2 fail their probe while a batch of 4 runs (eager)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "eight"], ["mid"]),
            helper.make_node("Reshape", ["mid", "back"], ["y"]),
        ],
        "reshape_by_eight",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [
            helper.make_tensor("eight", TensorProto.INT64, [2], [8, -1]),
            helper.make_tensor("back", TensorProto.INT64, [2], [-1, 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_an_ort_stage_failing_its_probe_runs_eager_alone(tmp_path, registry, caplog):
    options = RunnerOptions(backend="sim", sizes=[4], name="mix.double", registry=registry)
    double = GraphRunner(lambda x: x * 2, torch.randn(4, 2), options=options)
    path = _reshape_by_eight(tmp_path / "reshape.onnx")
    copy = OrtRunner(
        path, torch.randn(4, 2), sizes=[1, 2], backend="binding", name="mix.copy", registry=registry
    )

    def flow(pipe: Pipeline, x: torch.Tensor) -> torch.Tensor:
        return pipe.call("copy", pipe.call("double", x)).clone()

    with caplog.at_level(logging.INFO, logger="graphrun.pipeline"):
        pipe = Pipeline([Stage("double", double), Stage("copy", copy)], flow, model="mix", registry=registry)
    assert pipe.tier("copy") is StageTier.EAGER and pipe.report("copy").reason is CaptureFailure.ERROR
    assert pipe.tier("double") is StageTier.GRAPH
    lines = [r for r in caplog.records if r.name == "graphrun.pipeline.startup" and "runs eager" in r.message]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "stage copy runs eager for the life of the process: error" in lines[0].getMessage()
    assert "graphs kept by: double" in lines[0].getMessage()
    x = torch.randn(4, 2)
    for _ in range(2):
        torch.testing.assert_close(pipe.act(x), x * 2)
    labels = {"runner": "mix.copy", "stage": "copy", "model": "mix"}
    failed = "graphrun_cuda_graph_capture_failed_at_init_total"
    assert value(registry, failed, reason="error", **labels) == 2  # once per rung, not per call
    assert value(registry, "graphrun_cuda_graph_eager_fallback_total", reason="above_top_rung", **labels) == 2
    assert value(registry, "graphrun_pipeline_stage_tier", model="mix", stage="copy", tier="eager") == 1
