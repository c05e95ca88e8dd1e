"""The decode benchmark on the CPU: a tiny full run, the bandwidth floor, the transformers weight mapping."""

import json

import pytest
import torch

from graphrun.bench import decode, peers
from graphrun.bench.decode import DecodeSetup, random_prompts, run_decode_bench
from graphrun.bench.decode_bytes import floor_bytes, weight_bytes
from graphrun.bench.peers import build_hf_model, hf_state_dict, run_peers
from graphrun.cli import build_parser
from graphrun.errors import ConfigError
from graphrun.llm.config import ModelConfig
from graphrun.llm.layers.attention import AttentionMetadata
from graphrun.llm.presets import preset_config
from graphrun.llm.weights import build_model, load_weights, random_init

STEPS = 3
ROW_KEYS = {
    "batch",
    "context_mean",
    "graph",
    "eager",
    "graph_sync",
    "eager_sync",
    "graph_sync_over_floor",
    "replay",
    "replay_by_kind",
    "speedup",
    "floor_bytes",
    "floor_ms",
    "graph_over_floor",
    "achieved_gbs",
    "tokens_per_s",
    "tokens_match",
}
SMALL_LLAMA = ModelConfig(
    architecture="LlamaForCausalLM",
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    rms_norm_eps=1e-5,
    rope_theta=500_000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
    max_position_embeddings=256,
    tie_word_embeddings=True,
)


def tiny_setup(tmp_path, **kw) -> DecodeSetup:
    values = dict(
        model="tiny",
        batch_sizes=(1, 2),
        context=16,
        new_tokens=25,  # 1 probe + 2 x 3 synchronized + 5 warm-up + 2 x (1 + 5) pipelined decode steps
        steps=STEPS,
        warmup=0,
        dtype="float32",
        device="cpu",
        peers=False,
        peer_batch_sizes=(),
        out=tmp_path,
    )
    return DecodeSetup(**{**values, **kw})


def test_tiny_cpu_run_writes_its_json_and_times_both_paths(tmp_path, monkeypatch, capsys):
    engines = []

    def build(setup):
        engine = build_engine(setup)
        greedy = engine._eager_decode["greedy"]
        calls = []
        engine._eager_decode["greedy"] = lambda *args: calls.append(1) or greedy(*args)
        engines.append((engine, calls))
        return engine

    build_engine = decode.build_engine
    monkeypatch.setattr(decode, "build_engine", build)
    payload = run_decode_bench(tiny_setup(tmp_path))
    saved = json.loads((tmp_path / "decode-cpu.json").read_text())
    assert (tmp_path / "decode-cpu.png").stat().st_size > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == saved
    assert {
        "device",
        "torch",
        "commit",
        "engine",
        "results",
        "generate",
        "goals",
        "copy_bandwidth_gbs",
    } <= set(saved)
    assert [r["batch"] for r in saved["results"]] == [1, 2]
    for row in saved["results"]:
        assert set(row) >= ROW_KEYS
        assert row["tokens_match"]  # graph and eager greedy tokens agree on the same packed inputs
        assert row["floor_ms"] > 0 and row["graph"]["median_ms"] > 0
        # pipelined and synchronized steps are the same work, so the same unit: a slip between seconds and
        # milliseconds is a factor of 1000; a busy machine stretches one side by several times (6x seen)
        assert 1 / 100 < row["graph"]["median_ms"] / row["graph_sync"]["median_ms"] < 100
    assert saved["generate"]["tokens_match_eager"] and saved["generate"]["new_tokens"] == 25
    assert saved["ok"] and payload["ok"]
    assert saved["engine"]["decode_graphs"] and saved["engine"]["capture_sizes"] == [1, 2]
    assert saved["goals"] and not any(g["met"] for g in saved["goals"])  # CPU timings never meet a target
    engine, eager_calls = engines[0]
    pipelined = decode.BLOCK_STEPS  # one timed block per path (STEPS < BLOCK_STEPS)
    assert len(eager_calls) >= 2 * STEPS + pipelined  # the eager blocks really ran eager ...
    replayed = engine.decode_graphs.runners["greedy"].stats.num_replayed
    assert replayed >= 2 * STEPS + 2 * pipelined  # ... and graphs replayed


def test_setup_rejects_a_window_longer_than_the_requests(tmp_path):
    with pytest.raises(ConfigError, match="--new-tokens"):
        tiny_setup(tmp_path, steps=50)
    with pytest.raises(ConfigError, match="--peer-batch-sizes"):
        tiny_setup(tmp_path, peer_batch_sizes=(4,))


def test_cli_flags_reach_the_decode_subcommand():
    args = build_parser().parse_args(
        ["bench", "decode", "--peers", "--peer-batch-sizes", "1,4", "--steps", "7"]
    )
    assert (args.bench_command, args.peers, args.peer_batch_sizes, args.steps) == ("decode", True, "1,4", 7)
    assert (args.model, args.batch_sizes, args.context, args.new_tokens) == (
        "qwen3-0.6b-shape",
        "1,4,16,64",
        512,
        128,
    )


def test_floor_counts_projections_head_embedding_rows_and_filled_cache():
    config = preset_config("qwen3-0.6b-shape")
    assert weight_bytes(config, 2) == pytest.approx(1.19e9, rel=0.02)
    kv = 4 * 100 * 28 * 2 * 8 * 128 * 2  # batch * context * layers * (k, v) * kv_heads * head_dim * bytes
    assert floor_bytes(config, 4, 100, 2) == weight_bytes(config, 2) + 4 * 1024 * 2 + kv


def test_prompts_are_seeded_and_never_zero():
    a, b = random_prompts(3, 50, 512, seed=0), random_prompts(3, 50, 512, seed=0)
    assert a == b and len(a) == 3 and all(len(p) == 50 and min(p) >= 1 for p in a)


def _graphrun_model(config: ModelConfig):
    model = build_model(config, torch.float32, "cpu")
    random_init(model, seed=3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # random_init sets norms to 1: make a swapped mapping visible
                param.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(len(name)))
    return model


def _prefill_logits(model, ids: list[int]) -> torch.Tensor:
    """Logits of every position, one sequence prefilled through a paged cache (block 0 left unused)."""
    config, n, block = model.config, len(ids), 4
    num_blocks = -(-n // block) + 1
    shape = (num_blocks, block, config.num_kv_heads, config.head_dim)
    caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(config.num_layers)]
    slots = [(1 + p // block) * block + p % block for p in range(n)]
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots),
        block_tables=torch.arange(1, num_blocks, dtype=torch.int32)[None],
        context_lens=torch.tensor([n], dtype=torch.int32),
        query_start=torch.tensor([0, n], dtype=torch.int32),
        query_start_host=[0, n],
        context_lens_host=[n],
    )
    return model.compute_logits(model(torch.tensor(ids), torch.arange(n), meta, caches))


@pytest.mark.parametrize("config", [preset_config("tiny"), SMALL_LLAMA], ids=["tiny-qwen3", "small-llama"])
def test_hf_mapping_round_trip_gives_the_same_logits(config, tmp_path):
    model = _graphrun_model(config)
    hf = build_hf_model(model, torch.float32, "cpu")
    ids = random_prompts(1, 20, config.vocab_size, seed=5)[0]
    with torch.inference_mode():
        ours = _prefill_logits(model, ids)
        theirs = hf(torch.tensor([ids])).logits[0].float()
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    hf.save_pretrained(tmp_path)  # and back through graphrun's own loader
    again = build_model(config, torch.float32, "cpu")
    load_weights(again, tmp_path)
    for (name, want), got in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(want, got), name
    assert len(hf_state_dict(model)) == len(hf.state_dict())


def test_eager_peer_times_steps_and_reproduces_graphrun_greedy_tokens():
    model = _graphrun_model(preset_config("tiny"))
    hf = build_hf_model(model, torch.float32, "cpu")
    prompt = random_prompts(1, 12, 512, seed=0)[0]
    with torch.inference_mode():
        ours = [int(_prefill_logits(model, prompt)[-1].argmax())]
        for _ in range(3):
            ours.append(int(_prefill_logits(model, prompt + ours)[-1].argmax()))

    def prompts_for(n):
        if n == 3:
            raise RuntimeError("no prompts for batch 3")
        return random_prompts(n, 12, 512, seed=0)

    result = run_peers(hf, prompts_for, (1, 3), 4, ours, modes=("hf_eager",))
    ok, failed = result["modes"]["hf_eager"]["points"]
    # a difference of two medians: on a busy machine it can come out negative, so only its presence counts
    assert isinstance(ok["per_step_ms"], float) and "error" not in ok
    assert failed["per_step_ms"] is None and "no prompts for batch 3" in failed["error"]
    assert result["greedy_parity"]["num_leading_agree"] == 4
    assert run_peers("build failed", prompts_for, (1,), 4, ours)["error"] == "build failed"


def test_peers_without_transformers_say_which_extra_brings_it(monkeypatch):
    def no_transformers(*args):
        raise ModuleNotFoundError("No module named 'transformers'")

    monkeypatch.setattr(peers, "build_hf_model", no_transformers)
    error = peers.try_build_hf_model(_graphrun_model(preset_config("tiny")), torch.float32, "cpu")
    assert isinstance(error, str) and "No module named 'transformers'" in error
    assert "pip install 'graphrun[bench]'" in error


def test_piecewise_mode_times_decode_steps_through_the_piecewise_graphs(tmp_path, monkeypatch, capsys):
    engines = []

    def build(setup):
        engines.append(build_engine(setup))
        return engines[-1]

    build_engine = decode.build_engine
    monkeypatch.setattr(decode, "build_engine", build)
    saved = run_decode_bench(tiny_setup(tmp_path, batch_sizes=(2,), cuda_graph_mode="piecewise"))
    assert saved["ok"] and saved["settings"]["cuda_graph_mode"] == "piecewise"
    assert all(row["tokens_match"] for row in saved["results"])
    engine = engines[0]
    assert engine.decode_graphs is None
    assert engine.piecewise_graphs.runner.stats.num_replayed >= 2 * STEPS  # the graph path replayed them
    args = build_parser().parse_args(["bench", "decode", "--cuda-graph-mode", "PIECEWISE"])
    assert args.cuda_graph_mode == "piecewise"
