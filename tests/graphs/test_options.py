"""RunnerOptions: validation at construction, and options= meaning exactly what the keyword options mean."""

import dataclasses
import typing

import pytest
import torch

from graphrun import GraphRunner
from graphrun.errors import ConfigError
from graphrun.graphs.options import RunnerKeywords, RunnerOptions


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"scalars": "dynamic"}, "scalars"),
        ({"pad": "zeros"}, "pad"),
        ({"kwarg_batch_dims": "other"}, "kwarg_batch_dims"),
        ({"backend": "tpu"}, "backend"),
        ({"name": ""}, "name"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"sizes": []}, "must not be empty"),
        ({"sizes": [0, 4]}, "positive integers"),
        ({"sizes": [1, 2, 4], "max_batch_size": 8}, "disagrees"),
        ({"agree": bool, "capture": "background"}, "capture_step"),
        ({"sizes": iter([1, 2])}, "list or tuple"),
        ({"memory_budget_bytes": 0}, "memory_budget_bytes"),
        ({"warmup_iters": 0}, "warmup_iters"),
        ({"tolerance": (1e-3,)}, "tolerance"),
        ({"tolerance": (1e-3, -1.0)}, "tolerance"),
    ],
)
def test_a_bad_option_is_refused_when_the_options_are_built(fields, named):
    with pytest.raises(ConfigError, match=named):
        RunnerOptions(**fields)


def test_options_are_frozen_and_replace_validates_again():
    options = RunnerOptions(sizes=(1, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.pad = 0  # type: ignore[misc]
    assert dataclasses.replace(options, pad=0).pad == 0
    with pytest.raises(ConfigError, match="warmup_iters"):
        dataclasses.replace(options, warmup_iters=0)


def test_the_typed_keywords_name_every_option():
    keys = set(typing.get_type_hints(RunnerKeywords))
    assert keys == {f.name for f in dataclasses.fields(RunnerOptions)}


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).eval()


def test_options_object_and_keyword_options_build_the_same_runner(registry):
    net, x = _net(), torch.randn(2, 4)
    fields = {"sizes": [1, 2, 4], "pad": 0.0, "backend": "sim", "registry": registry, "clone_outputs": True}
    by_keywords = GraphRunner(net, (x,), name="kw", **fields)
    by_options = GraphRunner(net, (x,), options=RunnerOptions(name="opt", **fields))
    assert dataclasses.replace(by_keywords.options, name="opt") == by_options.options
    assert by_keywords.sizes == by_options.sizes == (1, 2, 4)
    assert [s.captured for s in by_keywords.status()] == [s.captured for s in by_options.status()]
    batch = torch.randn(3, 4)  # pads to rung 4 with the fill value 0.0 on both
    got_keywords, got_options = by_keywords(batch), by_options(batch)
    torch.testing.assert_close(got_keywords, got_options)
    torch.testing.assert_close(got_options, net(batch))
    assert by_keywords.stats.num_padded_rows == by_options.stats.num_padded_rows == 1


def test_defaults_are_the_same_either_way(registry):
    r = GraphRunner(_net(), (torch.randn(2, 4),), backend="sim", registry=registry, name="d")
    assert r.options == RunnerOptions(backend="sim", registry=registry, name="d")


def test_a_bad_keyword_option_raises_before_anything_is_built(registry):
    with pytest.raises(ConfigError, match="pad must be"):
        GraphRunner(_net(), (torch.randn(2, 4),), pad="zeros", backend="sim", registry=registry)


def test_options_and_keyword_options_together_are_an_error(registry):
    with pytest.raises(ConfigError, match=r"options= and keyword options \['pad'\]"):
        GraphRunner(_net(), (torch.randn(2, 4),), options=RunnerOptions(backend="sim"), pad=0)


def test_an_unknown_keyword_names_the_valid_options():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['max_bs'\].*max_batch_size"):
        GraphRunner(_net(), (torch.randn(2, 4),), max_bs=4)  # type: ignore[call-arg]


def test_options_must_be_a_runner_options():
    with pytest.raises(ConfigError, match="options must be a RunnerOptions, got dict"):
        GraphRunner(_net(), (torch.randn(2, 4),), options={"sizes": [1]})  # type: ignore[arg-type]
