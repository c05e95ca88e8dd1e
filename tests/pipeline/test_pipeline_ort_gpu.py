"""The example policy on ORT CUDA graphs (onnxruntime-gpu): both stages exported, one graph per rung per
stage, act() equal to the ORT eager session and to the torch policy; mixed with a GraphRunner stage.
Skipped without CUDA (conftest) or without onnxruntime's CUDAExecutionProvider. NOT YET RUN on a GPU
when written: the README says what has been validated where.

Tolerances: ORT graphs vs the ORT eager session (the same CUDA EP kernels): rtol 1e-4, atol 1e-5.
ORT vs torch (the CUDA EP may run float32 matmuls in TF32, torch does not by default): the action chunk's
relative L2 error <= 1e-2.
"""

from __future__ import annotations

import pytest
import torch
from prometheus_client import CollectorRegistry

pytest.importorskip("onnxruntime", reason="graphrun[onnx] is not installed")
pytest.importorskip("onnxscript", reason="graphrun[onnx] is not installed")

from graphrun import ExamplePolicy, ExamplePolicyConfig, StageTier
from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.verify import mismatch
from graphrun.ort import OrtOptions
from graphrun.ort.sessions import has_cuda_ep

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not has_cuda_ep(), reason="onnxruntime has no CUDAExecutionProvider"),
]
GRAPHS = OrtOptions(backend="cuda_graph")
EAGER = OrtOptions(backend="eager")
STAGES = ("prefix", "expert")
SAME_KERNELS = (1e-4, 1e-5)
MAX_RELATIVE_L2 = 1e-2


def relative_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


@pytest.fixture(scope="module")
def policy():
    return ExamplePolicy(ExamplePolicyConfig(batch_sizes=(1, 2, 4)), device="cuda")


@pytest.fixture(scope="module")
def folder(policy, tmp_path_factory):
    target = tmp_path_factory.mktemp("policy_onnx_gpu")
    policy.export_onnx(target)
    return target


def test_the_policy_on_ort_cuda_graphs_acts_like_eager(policy, folder, registry, capfd):
    pipe = policy.pipeline(GRAPHS, onnx_folder=folder, registry=registry)
    eager = policy.pipeline(EAGER, onnx_folder=folder, registry=CollectorRegistry())
    assert [pipe.tier(s) for s in STAGES] == [StageTier.GRAPH, StageTier.GRAPH], pipe.reports
    assert {s.runner.status().backend for s in pipe.stages} == {"ort-cuda-graph"}
    for batch in (1, 3, 4, 5):  # 3: padded to 4; 5: above the top rung, eager
        obs = policy.observation(batch, seed=batch)
        got = pipe.act(obs)
        assert mismatch(got, eager.act(obs), SAME_KERNELS) is None
        assert relative_l2(got, policy.act_eager(obs)) <= MAX_RELATIVE_L2
    expert = pipe["expert"].runner
    assert expert.stats.num_replayed == 3 * policy.config.num_steps  # type: ignore[attr-defined]
    # ORT turns graphs off for a model it cannot capture with only a warning (ort/sessions.py, rule 2)
    assert "cuda graph" not in capfd.readouterr().err.lower()


def test_a_graph_runner_prefix_and_an_ort_graph_expert_mix(policy, folder, registry):
    cuda = RunnerOptions(backend="cuda")
    pipe = policy.pipeline(cuda, stage_options={"expert": GRAPHS}, onnx_folder=folder, registry=registry)
    assert [pipe.tier(s) for s in STAGES] == [StageTier.GRAPH, StageTier.GRAPH], pipe.reports
    obs = policy.observation(2, seed=11, id="frame")
    first = pipe.act(obs)
    assert relative_l2(first, policy.act_eager(obs)) <= MAX_RELATIVE_L2
    assert mismatch(pipe.act(obs), first, SAME_KERNELS) is None  # the prefix from the cache
    assert pipe["prefix"].stats.calls == 1
    pipe.close()
