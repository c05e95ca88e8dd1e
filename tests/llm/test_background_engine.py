"""EngineConfig(capture="background"): start-up ends before any graph; the engine captures one rung
between steps while requests run, and greedy tokens stay those of an eager engine throughout."""

import pytest

from graphrun.errors import ConfigError
from graphrun.llm import background_graphs
from graphrun.llm.engine import LLMEngine
from graphrun.llm.engine_config import EngineConfig
from graphrun.llm.sampling_params import SamplingParams

LADDER = (1, 2, 4, 8)
GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)  # more steps than rungs


def engine(**kw):
    kw.setdefault("cuda_graph_mode", "full_and_piecewise")  # the background pass over both kinds of graphs
    kw.setdefault("max_num_seqs", 8)
    kw.setdefault("max_model_len", 96)
    return LLMEngine(EngineConfig(model="tiny", **kw))


def run_all(eng, prompts):
    """Every request's tokens, and the engine's graph progress after each step."""
    ids = [eng.add_request(p, GREEDY) for p in prompts]
    out = {i: [] for i in ids}
    progress = []
    while eng.has_unfinished():
        for o in eng.step():
            out[o.seq_id].append(o.new_token_id)
        progress.append(eng.graph_progress())
    return [out[i] for i in ids], progress


@pytest.mark.parametrize("async_scheduling", [True, False])
@pytest.mark.parametrize("mixed_prefill", [0, 8])
def test_greedy_tokens_match_eager_while_the_rungs_switch(monkeypatch, async_scheduling, mixed_prefill):
    monkeypatch.setattr(background_graphs, "BUSY_CAPTURE_SHARE", 1.0)  # a rung after every step
    kw = {"async_scheduling": async_scheduling, "mixed_prefill_tokens": mixed_prefill}
    bg = engine(graph_backend="sim", cuda_graph_sizes=LADDER, capture="background", **kw)
    eager = engine(enforce_eager=True, **kw)
    total = 3 * len(LADDER) + len(bg.prefill_capture_sizes()) + len(bg.piecewise_capture_sizes())
    assert bg.graph_progress() == f"capturing 0/{total}"  # start-up captured nothing
    prompts = [f"request {i} asks about item {i * 7}" for i in range(6)]
    got, progress = run_all(bg, prompts)
    assert got == run_all(eager, prompts)[0]
    # the switch happened during these requests: one rung per step, then all of them
    assert progress[0] == f"capturing 1/{total}" and progress[-1] == f"captured {total}/{total}"
    greedy = bg.decode_graphs.runners["greedy"]
    assert greedy.stats.num_replayed > 0  # graphs took over mid-run
    assert not bg.capture_pending and not bg.capture_step()
    assert got == run_all(bg, prompts)[0]  # and, all captured, the answer is the same


def test_under_load_capture_takes_a_share_of_the_time_not_every_step():
    bg = engine(graph_backend="sim", cuda_graph_sizes=LADDER, capture="background")
    eager = engine(enforce_eager=True)
    prompts = [f"request {i} asks about item {i * 7}" for i in range(6)]
    got, progress = run_all(bg, prompts)
    assert got == run_all(eager, prompts)[0]
    total = 3 * len(LADDER) + len(bg.prefill_capture_sizes()) + len(bg.piecewise_capture_sizes())
    first = f"capturing 0/{total}"
    steps_with_a_rung = sum(a != b for a, b in zip([first, *progress], progress, strict=False))
    assert 1 <= steps_with_a_rung < len(progress) / 2  # rungs land, with steps in between
    while bg.capture_step():  # idle: back to back
        pass
    assert bg.graph_progress() == f"captured {total}/{total}"


def test_blocks_held_for_prefill_capture_return_when_it_ends():
    bg = engine(graph_backend="sim", cuda_graph_sizes=LADDER, capture="background")
    manager = bg.scheduler.block_manager
    held = manager.blocks_for_tokens(max(*bg.prefill_capture_sizes(), *bg.piecewise_capture_sizes()))
    assert manager.num_free_blocks == manager.num_usable_blocks - held
    while bg.capture_step():
        pass
    assert manager.num_free_blocks == manager.num_usable_blocks
    assert all(s.captured for r in bg.status().runners for s in r)
    total = 3 * len(LADDER) + len(bg.prefill_capture_sizes()) + len(bg.piecewise_capture_sizes())
    assert bg.describe()["graphs"] == bg.graph_progress() == f"captured {total}/{total}"


def test_now_is_the_default_and_a_bad_mode_is_refused():
    eng = engine(graph_backend="sim", cuda_graph_sizes=(1, 2), cuda_graph_max_prefill_tokens=0)
    # 2 sizes x 3 decode kinds (the structured ones come with the first structured step)
    assert not eng.capture_pending and eng.graph_progress() == "captured 6/6"
    assert engine(enforce_eager=True).graph_progress() == "off"
    with pytest.raises(ConfigError, match="background"):
        EngineConfig(model="tiny", capture="lazy")


def test_status_table_says_capture_is_under_way():
    bg = engine(graph_backend="sim", cuda_graph_sizes=(1, 2), capture="background")
    bg.capture_step()
    assert "capturing in the background (1/" in str(bg.status())
    assert "pending [1]" in str(bg.status())  # decode-sampling: 2 landed, 1 to go
