"""Pipeline: every stage and the whole act() equal eager; the prefix cache; names, labels and bad input."""

import pytest
import torch
from prometheus_client import generate_latest

from graphrun import (
    ConfigError,
    ExamplePolicy,
    ExamplePolicyConfig,
    GraphRunner,
    Observation,
    ObservationError,
    Pipeline,
    Stage,
    StageTier,
)
from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.verify import mismatch
from metric_value import value

SIM = RunnerOptions(backend="sim")


@pytest.fixture(scope="module")
def policy():
    return ExamplePolicy(ExamplePolicyConfig.tiny(batch_sizes=(1, 2)))


def test_every_stage_and_act_equal_eager(policy, registry):
    pipe = policy.pipeline(SIM, registry=registry)
    assert [pipe.tier(s.name) for s in pipe.stages] == [StageTier.GRAPH, StageTier.GRAPH]
    for batch in (1, 2):
        obs = policy.observation(batch, seed=batch)
        kv = pipe.call("prefix", obs.images, obs.tokens, obs.state).clone()
        want_kv = policy.prefix(obs.images, obs.tokens, obs.state)
        assert mismatch(kv, want_kv) is None
        t = torch.full((batch, 1), 0.3)
        assert mismatch(pipe.call("expert", kv, obs.noise, t), policy.expert(kv, obs.noise, t)) is None
        got = pipe.act(obs)
        assert got.shape == (batch, 4, 2)
        assert mismatch(got, policy.act_eager(obs)) is None
    replays = value(registry, "graphrun_cuda_graph_replayed_total", runner="example.expert", stage="expert",
                    model="example")  # fmt: skip
    assert replays == 2 * (1 + policy.config.num_steps)  # nothing of act() ran eager


def test_act_is_deterministic_given_the_seed(registry):
    a = ExamplePolicy(ExamplePolicyConfig.tiny(seed=7))
    b = ExamplePolicy(ExamplePolicyConfig.tiny(seed=7))
    obs = a.observation(1, seed=1, noise=False)  # the noise comes from each policy's seeded generator
    assert torch.equal(a.act_eager(obs), b.act_eager(obs))
    c = ExamplePolicy(ExamplePolicyConfig.tiny(seed=8))
    assert not torch.equal(a.act_eager(obs), c.act_eager(obs))


def test_prefix_cache_hits_by_observation_id(policy, registry):
    pipe = policy.pipeline(SIM, registry=registry)
    obs = policy.observation(1, seed=4, id="frame-1")
    first = pipe.act(obs)
    second = pipe.act(obs)
    assert torch.equal(first, second)
    assert pipe["prefix"].stats.calls == 1  # the second act() skipped the prefix stage
    other = policy.observation(1, seed=5, id="frame-2")
    assert mismatch(pipe.act(other), policy.act_eager(other)) is None
    labels = {"model": "example", "stage": "prefix"}
    assert value(registry, "graphrun_pipeline_cache_hits_total", **labels) == 1
    assert value(registry, "graphrun_pipeline_cache_misses_total", **labels) == 2
    assert value(registry, "graphrun_pipeline_cache_entries", **labels) == 2
    assert value(registry, "graphrun_pipeline_acts_total", model="example") == 3
    assert value(registry, "graphrun_pipeline_stage_calls_total", model="example", stage="expert") == 9


def test_prefix_cache_is_bounded(registry):
    policy = ExamplePolicy(ExamplePolicyConfig.tiny(prefix_cache_entries=2))
    pipe = policy.pipeline(SIM, registry=registry)
    for i in range(4):
        pipe.act(policy.observation(1, seed=i, id=i))
    cache = pipe["prefix"].cache
    assert cache is not None and len(cache) == 2 and 0 not in cache and 3 in cache
    assert value(registry, "graphrun_pipeline_cache_evictions_total", model="example", stage="prefix") == 2


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda o, p: {"images": o.images[:, :3]}, "'images' has shape"),
        (lambda o, p: {"tokens": o.tokens.float()}, "'tokens' must hold integer ids"),
        (lambda o, p: {"tokens": o.tokens + p.config.vocab_size}, "'tokens' holds ids outside"),
        (lambda o, p: {"state": o.state.double()}, "'state' is torch.float64"),
        (lambda o, p: {"state": torch.randn(2, p.config.state_dim)}, "'state' has 2 rows"),
        (lambda o, p: {"noise": o.noise[:, :, :1]}, "'noise' has shape"),
        (lambda o, p: {"images": o.images.numpy()}, "'images' must be a torch.Tensor"),
    ],
)
def test_bad_observation_names_the_tensor(policy, registry, change, named):
    pipe = policy.pipeline(SIM, registry=registry)
    obs = policy.observation(1, seed=0)
    fields = {"images": obs.images, "tokens": obs.tokens, "state": obs.state, "noise": obs.noise}
    fields.update(change(obs, policy))
    with pytest.raises(ObservationError, match=named):
        pipe.act(Observation(**fields))
    assert pipe["prefix"].stats.calls == 0  # refused before any stage ran


def test_act_refuses_what_is_not_an_observation(policy, registry):
    pipe = policy.pipeline(SIM, registry=registry)
    with pytest.raises(ObservationError, match="takes an Observation"):
        pipe.act({"images": torch.zeros(1)})


def test_stage_runner_series_carry_stage_and_model_labels(policy, registry):
    policy.pipeline(SIM, registry=registry)
    text = generate_latest(registry).decode()
    assert (
        'graphrun_cuda_graph_captured_total{model="example",runner="example.prefix",stage="prefix"} 2.0'
        in text
    )


def test_pipeline_refuses_bad_stages(registry):
    runner = GraphRunner(lambda x: x, (torch.randn(1, 2),), sizes=[1], backend="sim", registry=registry)
    with pytest.raises(ConfigError, match="unique"):
        Pipeline([Stage("a", runner), Stage("a", runner)], lambda p, x: x, registry=registry)
    with pytest.raises(ConfigError, match="stage name"):
        Stage("bad name!", runner)
    with pytest.raises(ConfigError, match="call API"):
        Stage("s", lambda x: x)  # type: ignore[arg-type]
    pipe = Pipeline([Stage("a", runner)], lambda p, x: p.call("a", x), model="m", registry=registry)
    with pytest.raises(ConfigError, match="no stage 'b'"):
        pipe["b"]
    with pytest.raises(ConfigError, match="unknown stages"):
        ExamplePolicy(ExamplePolicyConfig.tiny()).pipeline(stage_options={"decoder": SIM})


def test_a_background_capture_is_waited_for_at_start_up(registry):
    runner = GraphRunner(lambda x: x - 1, (torch.randn(2, 2),), sizes=[1, 2], backend="sim",
                         capture="background", registry=registry)  # fmt: skip
    pipe = Pipeline([Stage("s", runner)], lambda p, x: p.call("s", x), model="m", registry=registry)
    assert pipe.tier("s") is StageTier.GRAPH and pipe.report("s").num_captured == 2


def test_a_later_capture_runner_is_probed_at_start_up(registry):
    runner = GraphRunner(lambda x: x * 3, (torch.randn(1, 2),), sizes=[1], backend="sim", capture=False,
                         registry=registry)  # fmt: skip
    pipe = Pipeline([Stage("s", runner)], lambda p, x: p.call("s", x), model="m", registry=registry)
    assert pipe.tier("s") is StageTier.GRAPH
    assert torch.equal(pipe.act(torch.ones(1, 2)), torch.full((1, 2), 3.0))


def test_a_device_named_without_its_index_takes_tensors_on_it(policy):
    from graphrun.pipeline.policy.observation import check_observation

    obs = policy.observation(1, seed=0)
    dtype = obs.state.dtype
    # "cpu:0" and "cpu" are one device, as "cuda" and "cuda:0" are (an H100 run refused every observation)
    assert check_observation(obs, policy.config, torch.device("cpu", 0), dtype) == 1
    with pytest.raises(ObservationError, match="is on cpu"):
        check_observation(obs, policy.config, torch.device("meta"), dtype)
