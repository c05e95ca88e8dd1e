"""LLMEngine with tensor_parallel_size=2 on the CPU (rank 0 here, rank 1 a gloo worker process) gives
the tokens of one rank, through continuous batching, an abort, choices and seeded sampling; eagerly and
with the sim backend's graphs captured per rank.

Each engine pair (TP=1, TP=2) lives for the module and runs the same calls in the same order, so the
two always share one history (seq ids, prefix cache) and any divergence is the TP path's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tp_scenario import COMMON, GREEDY, MAX_TOKENS, SEEDED, STRUCTURED, UNSEEDED, run_scenario

from graphrun.errors import ConfigError
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams

SIM = dict(graph_backend="sim", cuda_graph_sizes=(1, 2, 4), cuda_graph_max_prefill_tokens=16)


def _pair(**options: object) -> Iterator[tuple[LLMEngine, LLMEngine]]:
    one = LLMEngine(EngineConfig(**COMMON, **options))  # type: ignore[arg-type]
    two = LLMEngine(EngineConfig(**COMMON, **options, tensor_parallel_size=2))  # type: ignore[arg-type]
    try:
        yield one, two
    finally:
        two.close()


def _check_same(pair: tuple[LLMEngine, LLMEngine], params: list[SamplingParams]) -> dict[int, list[int]]:
    one, two = (run_scenario(engine, params) for engine in pair)
    assert two == one
    lengths = sorted(len(t) for t in one.values())
    assert lengths[-1] == MAX_TOKENS and lengths[0] < MAX_TOKENS  # the aborted one was cut short
    return one


# one tensor-parallel engine per process: each class's pair is closed when its class ends
@pytest.fixture(scope="class")
def eager_pair() -> Iterator[tuple[LLMEngine, LLMEngine]]:
    yield from _pair()


@pytest.fixture(scope="class")
def graph_pair() -> Iterator[tuple[LLMEngine, LLMEngine]]:
    yield from _pair(**SIM)


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> tuple[LLMEngine, LLMEngine]:
    return request.getfixturevalue(request.cls.PAIR)


class TestEager:
    PAIR = "eager_pair"

    def test_greedy_tokens_of_two_ranks_are_those_of_one(self, pair):
        tokens = _check_same(pair, [GREEDY])
        assert len({tuple(t) for t in tokens.values()}) > 2  # distinct prompts, distinct continuations
        assert len(pair[1].worker_pids) == 1 and pair[1].describe()["tensor_parallel_size"] == 2

    def test_seeded_and_unseeded_sampling_of_two_ranks_is_that_of_one(self, pair):
        tokens = _check_same(pair, [SEEDED, UNSEEDED, GREEDY])
        choices = sorted(tokens)[-2:]  # seeds 11 and 12: they differ (and choice 0 repeats request 0)
        assert tokens[choices[0]] != tokens[choices[1]]

    def test_structured_output_of_two_ranks_is_that_of_one(self, pair):
        """Each rank advances its own matchers and fills its own masks; the steps stay in lockstep."""
        tokens = _check_same(pair, [STRUCTURED, GREEDY])
        constrained = [t for t in tokens.values() if len(t) == MAX_TOKENS]  # all but the aborted request
        assert len(constrained) == 5 and all(max(t) < 256 for t in constrained)
        assert set(bytes(t for ids in constrained for t in ids)) <= set(b"abcdefghijklmnopqrstuvwxyz ")


class TestSimGraphs:
    PAIR = "graph_pair"

    def test_graphs_captured_per_rank_give_the_tokens_of_one_rank(self, pair):
        _check_same(pair, [GREEDY, SEEDED])
        _check_same(pair, [STRUCTURED, GREEDY])  # the structured forward, then a mask graph, per rank
        two = pair[1]
        assert two.decode_graphs is not None and two.prefill_graphs is not None
        assert all(s.captured for r in two.decode_graphs.runners.values() for s in r.status())
        assert sum(r.stats.num_replayed for r in two.decode_graphs.runners.values()) > 0
        # with two ranks the first structured step captured the structured kinds at once, on both (one
        # rank alone queues them on a background pass: structured_graphs.py), and the steps replayed them
        assert two.decode_graphs.runners["mask-sampling"].stats.num_replayed > 0
        assert two.decode_graphs.runners["structured"].stats.eager_fallback == {}
        with pytest.raises(RuntimeError, match="first structured step"):  # rank 0 alone cannot capture
            two.capture_structured_graphs()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (dict(tensor_parallel_size=0), "tensor_parallel_size must be an int >= 1"),
        (dict(tensor_parallel_size=2, capture="background"), "capture='now'"),
    ],
)
def test_bad_tensor_parallel_settings_are_refused(options, words):
    with pytest.raises(ConfigError, match=words):
        EngineConfig(**options)  # type: ignore[arg-type]
