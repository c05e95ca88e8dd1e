"""SamplingParams: defaults, validation messages that name the bad value, immutability."""

import dataclasses
import math
import pickle

import pytest

from graphrun.llm.sampling_params import SamplingParams, SamplingParamsError


def test_defaults_are_valid_and_sampled():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.seed, p.max_tokens) == (1.0, 0, 1.0, None, 16)
    assert p.stop_token_ids == () and not p.ignore_eos and not p.is_greedy


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"top_k": 1, "temperature": 0.7}])
def test_greedy_detection(kwargs):
    assert SamplingParams(**kwargs).is_greedy


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"temperature": math.nan}, "temperature must be >= 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"top_k": 2.5}, "top_k must be an int"),
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
        ({"max_tokens": True}, "max_tokens must be an int"),
        ({"seed": 2**63}, "seed must fit in 64 bits"),
        ({"seed": -(2**63) - 1}, "seed must be >= "),
        ({"stop_token_ids": [1, 2]}, "pass tuple(ids)"),
        ({"stop_token_ids": (1, -2)}, "non-negative token ids, got [-2]"),
    ],
)
def test_bad_values_raise_naming_the_value(kwargs, needle):
    with pytest.raises(SamplingParamsError, match=None) as info:
        SamplingParams(**kwargs)
    message = str(info.value)
    assert needle in message
    assert isinstance(info.value, ValueError)  # maps to HTTP 400 without special casing
    assert info.value.param == next(iter(kwargs))  # the error body's "param"
    copy = pickle.loads(pickle.dumps(info.value))  # crosses the engine process's pipe whole
    assert (str(copy), copy.param) == (message, info.value.param)


def test_extreme_valid_values_are_accepted():
    p = SamplingParams(temperature=0.0, top_p=1e-9, top_k=0, seed=-(2**63), max_tokens=1, stop_token_ids=(0,))
    assert p.seed == -(2**63)
    assert SamplingParams(seed=2**63 - 1).seed == 2**63 - 1


def test_frozen():
    p = SamplingParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 0.5  # type: ignore[misc]
    assert dataclasses.replace(p, temperature=0.5).temperature == 0.5
