"""Tier-aware start-up: one stage's forced capture failure leaves it eager and the other captured.

Each failure kind is forced on one stage through its own sim backend or options: out of memory and an
uncapturable op at capture, the memory budget, and a graph that replays stale outputs (verification).
"""

import logging

import pytest
import torch

from graphrun import ExamplePolicy, ExamplePolicyConfig, FaultPlan, SimBackend, StageTier
from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.verify import mismatch
from metric_value import value

SIM = RunnerOptions(backend="sim")
STAGES = ("prefix", "expert")
FAILURES = {
    "oom": lambda: RunnerOptions(
        backend=SimBackend(FaultPlan(capture={1: torch.OutOfMemoryError("no room")}))
    ),
    "uncapturable_op": lambda: RunnerOptions(
        backend=SimBackend(uncapturable=frozenset({torch.ops.aten.gelu.default}))
    ),
    "memory_budget": lambda: RunnerOptions(backend="sim", memory_budget_bytes=1),
    "verification_mismatch": lambda: RunnerOptions(backend=SimBackend(FaultPlan(stale=frozenset({1})))),
}


@pytest.fixture(scope="module")
def policy():
    return ExamplePolicy(ExamplePolicyConfig.tiny())


@pytest.mark.parametrize("reason", list(FAILURES))
@pytest.mark.parametrize("failing", STAGES)
def test_forced_failure_leaves_the_other_stage_captured(policy, registry, caplog, failing, reason):
    other = next(s for s in STAGES if s != failing)
    with caplog.at_level(logging.INFO, logger="graphrun.pipeline"):
        pipe = policy.pipeline(SIM, stage_options={failing: FAILURES[reason]()}, registry=registry)
    assert pipe.tier(failing) is StageTier.EAGER and pipe.report(failing).reason == reason
    assert pipe.tier(other) is StageTier.GRAPH
    lines = [r for r in caplog.records if r.name == "graphrun.pipeline.startup" and "runs eager" in r.message]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert f"stage {failing} runs eager for the life of the process: {reason}" in lines[0].getMessage()

    def failed(stage, why):
        labels = {"runner": f"example.{stage}", "stage": stage, "model": "example", "reason": why}
        return value(registry, "graphrun_cuda_graph_capture_failed_at_init_total", **labels)

    assert failed(failing, reason) == 1
    assert failed(other, reason) == 0
    obs = policy.observation(1, seed=2)
    assert mismatch(pipe.act(obs), policy.act_eager(obs)) is None
    pipe.act(obs)
    replayed = value(registry, "graphrun_cuda_graph_replayed_total", runner=f"example.{other}", stage=other,
                     model="example")  # fmt: skip
    assert replayed == 2 * (1 if other == "prefix" else policy.config.num_steps)
    assert value(registry, "graphrun_pipeline_stage_tier", model="example", stage=failing, tier="eager") == 1
    # a failure at start-up is counted once: the eager calls after it are counted apart, per call
    eager_calls = value(registry, "graphrun_cuda_graph_eager_fallback_total", runner=f"example.{failing}",
                        stage=failing, model="example", reason="rung_not_captured")  # fmt: skip
    assert eager_calls == 2 * (1 if failing == "prefix" else policy.config.num_steps)
    assert failed(failing, reason) == 1


def test_replay_failure_is_counted_per_call_not_at_start_up(policy, registry):
    broken = RunnerOptions(backend=SimBackend(FaultPlan(replay={1: RuntimeError("illegal memory access")})),
                           verify=False)  # fmt: skip
    pipe = policy.pipeline(SIM, stage_options={"expert": broken}, registry=registry)
    assert pipe.tier("expert") is StageTier.GRAPH  # it captured; its replays fail later
    obs = policy.observation(1, seed=3)
    assert mismatch(pipe.act(obs), policy.act_eager(obs)) is None
    labels = {"runner": "example.expert", "stage": "expert", "model": "example"}
    fallback = "graphrun_cuda_graph_eager_fallback_total"
    assert value(registry, fallback, reason="replay_error", **labels) == policy.config.num_steps
    failed = "graphrun_cuda_graph_capture_failed_at_init_total"
    assert sum(value(registry, failed, reason=r, **labels) for r in FAILURES) == 0


def test_graphs_switched_off_are_not_logged_as_failures(policy, registry, caplog):
    with caplog.at_level(logging.INFO, logger="graphrun.pipeline"):
        pipe = policy.pipeline(RunnerOptions(backend="sim", mode="none"), registry=registry)
    assert {pipe.tier(s) for s in STAGES} == {StageTier.EAGER}
    assert not any("runs eager" in r.message for r in caplog.records)
    assert not any(pipe.report(s).failed for s in STAGES)
