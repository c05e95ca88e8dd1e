"""The engine's cuda graph modes: every mode's greedy tokens equal eager's, and the piecewise graphs replay.

The tiny preset on the CPU, graphs through the simulator. Two workloads: plain prefill batches (several
prompts in one step, a long prompt split into a fresh chunk and continuation chunks that read the cache)
and mixed steps (prompt chunks riding along decode rows). Eager (mode none) is the reference.
"""

import pytest

from graphrun.errors import ConfigError
from graphrun.graphs import CudaGraphMode
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import CUDA_GRAPH_MODES, EngineConfig, GraphsOff, cuda_graph_mode_name
from graphrun.llm.piecewise_graph import piecewise_ladder
from graphrun.llm.sampling_params import SamplingParams
from graphrun.preflight import idle_graph_flags

MODES = ("full", "piecewise", "full_and_piecewise")
# 3 to 100 tokens; with 64 tokens a step, the 100-token prompt prefills as a fresh chunk + a continuation
PROMPT_LENGTHS = (5, 100, 17, 3, 40, 9)
WORKLOADS = {"prefill": 0, "mixed": 16}  # mixed_prefill_tokens


def make_engine(mode: str, mixed: int) -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            model="tiny",
            device="cpu",
            graph_backend="sim",
            max_num_seqs=4,
            max_num_batched_tokens=64,
            cuda_graph_max_prefill_tokens=64,  # ladders up to 64 tokens: quick to capture on the simulator
            mixed_prefill_tokens=mixed,
            cuda_graph_mode=mode,
        )
    )


class Recorder:
    """Wraps the engine's step runners: which batches went through the piecewise graphs."""

    def __init__(self, engine: LLMEngine) -> None:
        self.piecewise: list = []
        run = engine._run_piecewise

        def spy(batch):
            self.piecewise.append(batch)
            return run(batch)

        engine._run_piecewise = spy


def run_all(engine: LLMEngine) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    prompts = [[(7 * i + j) % 90 + 3 for j in range(n)] for i, n in enumerate(PROMPT_LENGTHS)]
    ids = [engine.add_request(p, params) for p in prompts]
    out: dict[int, list[int]] = {i: [] for i in ids}
    while engine.has_unfinished():
        for o in engine.step():
            out[o.seq_id].append(o.new_token_id)
    return [out[i] for i in ids]


@pytest.fixture(scope="module")
def eager_tokens() -> dict[str, list[list[int]]]:
    return {name: run_all(make_engine("none", mixed)) for name, mixed in WORKLOADS.items()}


def is_continuation(batch, row: int) -> bool:
    start, end = batch.query_start[row], batch.query_start[row + 1]
    return end - start > 1 and batch.positions[start] > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_every_mode_gives_eager_greedy_tokens(mode, workload, eager_tokens):
    engine = make_engine(mode, WORKLOADS[workload])
    recorder = Recorder(engine)
    assert run_all(engine) == eager_tokens[workload]
    batches = recorder.piecewise
    if mode == "full":
        assert engine.piecewise_graphs is None and not batches
        return
    assert engine.piecewise_graphs is not None
    assert engine.piecewise_graphs.runner.stats.num_replayed == len(batches) > 0
    assert any(is_continuation(b, r) for b in batches for r in range(len(b.seqs)))
    if workload == "mixed":
        assert any(b.kind == "mixed" for b in batches)
    else:
        assert any(len(b.seqs) > 1 and b.kind == "prefill" for b in batches)  # several prompts, one step
    decode_batches = [b for b in batches if b.kind == "decode"]
    assert bool(decode_batches) == (mode == "piecewise")  # full_and_piecewise keeps decode on FULL


def test_mixed_steps_replay_piecewise_graphs_and_decode_replays_full():
    engine = make_engine("full_and_piecewise", 100)  # a prompt budget above the top piecewise rung (64)
    recorder = Recorder(engine)
    run_all(engine)
    mixed = [b for b in recorder.piecewise if b.kind == "mixed"]
    assert mixed
    stats = engine.piecewise_graphs.runner.stats
    assert stats.num_replayed >= len(mixed) and stats.eager_fallback == {}
    assert engine.decode_graphs.runners["greedy"].stats.num_replayed > 0
    # capped at the top piecewise rung (64), not at the top decode rung (4): every step has a graph
    assert engine.scheduler.config.max_mixed_rows == 64
    assert 4 < max(b.num_tokens for b in mixed) <= 64


def test_piecewise_runner_has_one_segment_per_layer_and_shows_in_status():
    engine = make_engine("piecewise", 0)
    assert engine.decode_graphs is None and engine.prefill_graphs is None
    status = engine.status()
    assert status.graphs_off is None
    names = [r.runner for r in status.runners]
    assert any(name.startswith("piecewise") for name in names)
    assert engine.piecewise_graphs.sizes == (16, 32, 64)
    pieces = engine.piecewise_graphs.runner.backend
    assert pieces.eager_segments == {}
    described = engine.describe()
    assert described["cuda_graph_mode"] == "piecewise"
    assert described["piecewise_capture_sizes"] == [16, 32, 64]
    runner = engine.piecewise_graphs.runner  # labelled by what it records, not by its dispatch
    assert runner.status().mode == runner.stats.mode == "piecewise"


def test_a_step_above_the_top_rung_runs_eager_counted():
    config = EngineConfig(
        model="tiny",
        device="cpu",
        graph_backend="sim",
        max_num_seqs=4,
        max_num_batched_tokens=64,
        cuda_graph_max_prefill_tokens=16,  # ladder (16,): the 40 and 64-token steps are above it
        cuda_graph_mode="piecewise",
    )
    engine = LLMEngine(config)
    reference = make_engine("none", 0)
    assert run_all(engine) == run_all(reference)
    stats = engine.piecewise_graphs.runner.stats
    assert sum(stats.eager_fallback.values()) > 0 and stats.num_replayed > 0


def test_mode_names_match_the_graph_modes_and_parse_like_the_cli():
    assert set(CUDA_GRAPH_MODES) == {m.value for m in CudaGraphMode}
    assert cuda_graph_mode_name("FULL-and-piecewise") == "full_and_piecewise"
    with pytest.raises(ConfigError, match="piecewise"):
        cuda_graph_mode_name("partial")
    with pytest.raises(ConfigError, match="cuda_graph_mode"):
        EngineConfig(cuda_graph_mode="FULL")  # the config takes the canonical spelling only
    assert EngineConfig().cuda_graph_mode == "full_and_piecewise"  # the measured default


def test_mode_none_is_eager_and_says_why():
    config = EngineConfig(model="tiny", device="cpu", graph_backend="sim", cuda_graph_mode="none")
    engine = LLMEngine(config)
    assert engine.decode_graphs is None and engine.piecewise_graphs is None
    assert config.graphs_off(engine.device) is GraphsOff.MODE_NONE
    assert engine.status().graphs_off == "--cuda-graph-mode none"
    (note,) = idle_graph_flags(config, GraphsOff.MODE_NONE)
    assert note == "--graph-backend sim does nothing: decode graphs are off (--cuda-graph-mode is none)"


def test_piecewise_mode_warns_that_decode_sizes_do_nothing():
    config = EngineConfig(cuda_graph_sizes=(1, 2), cuda_graph_mode="piecewise")
    (note,) = idle_graph_flags(config, None)
    assert note.startswith("--cuda-graph-sizes 1,2 does nothing")
    assert idle_graph_flags(EngineConfig(cuda_graph_sizes=(1, 2)), None) == []
    (note,) = idle_graph_flags(EngineConfig(compile=True, cuda_graph_mode="piecewise"), None)
    assert note.startswith("--compile does nothing: --cuda-graph-mode piecewise")


def test_piecewise_ladder():
    assert piecewise_ladder(2048) == (16, 32, 64, 128, 256, 512, 1024, 2048)
    assert piecewise_ladder(100) == (16, 32, 64, 100)
    assert piecewise_ladder(0) == ()


def test_serve_and_generate_take_the_flag_in_any_spelling():
    from graphrun.cli import build_parser
    from graphrun.serve.cli import _configs

    parser = build_parser()
    serve = parser.parse_args(["serve", "--cuda-graph-mode", "PIECEWISE"])
    assert _configs(serve, "tiny")[0].cuda_graph_mode == "piecewise"
    assert _configs(parser.parse_args(["serve"]), "tiny")[0].cuda_graph_mode == "full_and_piecewise"
    generate = parser.parse_args(["generate", "--prompt", "x", "--cuda-graph-mode", "FULL"])
    assert generate.cuda_graph_mode == "full"
    with pytest.raises(SystemExit):  # argparse: "invalid cuda_graph_mode_name value", exit status 2
        parser.parse_args(["serve", "--cuda-graph-mode", "partial"])
