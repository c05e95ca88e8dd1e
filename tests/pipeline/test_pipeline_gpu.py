"""The example policy captured on CUDA: every stage and act() equal eager; the prefix forced to fail keeps
the expert's graph. Skipped without a CUDA device."""

import pytest
import torch

from graphrun import ExamplePolicy, ExamplePolicyConfig, StageTier
from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.verify import mismatch

pytestmark = pytest.mark.gpu

CUDA = RunnerOptions(backend="cuda")


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def policy(request):
    config = ExamplePolicyConfig(batch_sizes=(1, 2, 4))
    return ExamplePolicy(config, device="cuda", dtype=request.param)


def test_graph_equals_eager_for_every_stage_and_act(policy, registry):
    pipe = policy.pipeline(CUDA, registry=registry)
    assert {pipe.tier(s.name) for s in pipe.stages} == {StageTier.GRAPH}
    for batch in (1, 3, 4):  # 3 is padded up to the rung of 4
        obs = policy.observation(batch, seed=batch)
        kv = pipe.call("prefix", obs.images, obs.tokens, obs.state).clone()
        with torch.no_grad():
            assert mismatch(kv, policy.prefix(obs.images, obs.tokens, obs.state)) is None
            t = torch.full((batch, 1), 0.4, device="cuda", dtype=policy.dtype)
            want = policy.expert(kv, obs.noise, t)
        assert mismatch(pipe.call("expert", kv, obs.noise, t), want) is None
        assert mismatch(pipe.act(obs), policy.act_eager(obs)) is None
    assert pipe["expert"].runner.stats.num_replayed == 3 * (1 + policy.config.num_steps)  # type: ignore[attr-defined]
    pipe.close()


def test_prefix_forced_eager_keeps_the_expert_graph(policy, registry):
    forced = RunnerOptions(backend="cuda", memory_budget_bytes=1)
    pipe = policy.pipeline(CUDA, stage_options={"prefix": forced}, registry=registry)
    assert pipe.tier("prefix") is StageTier.EAGER and pipe.report("prefix").reason == "memory_budget"
    assert pipe.tier("expert") is StageTier.GRAPH
    obs = policy.observation(1, seed=9, id="frame")
    assert mismatch(pipe.act(obs), policy.act_eager(obs)) is None
    assert mismatch(pipe.act(obs), policy.act_eager(obs)) is None  # the prefix from the cache
    assert pipe["prefix"].stats.calls == 1
    pipe.close()
