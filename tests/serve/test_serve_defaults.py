"""The server's engine defaults as `graphrun serve` builds them from its flags (serve/cli.py)."""

from __future__ import annotations

import pytest

from graphrun.cli import build_parser
from graphrun.llm.engine_config import EngineConfig
from graphrun.serve.cli import _configs


def _engine(*flags: str) -> EngineConfig:
    return _configs(build_parser().parse_args(["serve", *flags]), "tiny")[0]


def test_the_default_mode_is_full_and_piecewise_with_a_512_token_mixed_budget():
    engine = _engine()
    assert engine.cuda_graph_mode == "full_and_piecewise"
    assert engine.mixed_prefill_tokens == 512


@pytest.mark.parametrize(("mode", "budget"), [("full", 64), ("none", 64), ("piecewise", 512)])
def test_the_mixed_budget_follows_the_mode_unless_given(mode, budget):
    assert _engine("--cuda-graph-mode", mode).mixed_prefill_tokens == budget
    assert _engine("--cuda-graph-mode", mode, "--mixed-prefill-tokens", "96").mixed_prefill_tokens == 96
    assert _engine("--mixed-prefill-tokens", "0").mixed_prefill_tokens == 0  # 0 still means alternate
