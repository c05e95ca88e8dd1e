"""Commands refuse bad settings before they start anything: one line on stderr, exit status 2, no traceback.

The command-line cases run `graphrun` as a user does (a subprocess): if a check broke, the server would
start instead, and the bounded wait would fail the test. No duration is asserted here;
benchmarks/cli_startup.py measures how fast these answers come.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from graphrun import preflight
from graphrun.cli import main
from graphrun.errors import ConfigError
from graphrun.llm.engine_config import EngineConfig, GraphsOff

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without CUDA")
QWEN3_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
}


def graphrun_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graphrun", *argv], capture_output=True, text=True, timeout=120, check=False
    )


def assert_refused(done: subprocess.CompletedProcess[str], command: str, *words: str) -> None:
    """Exit 2 with exactly one stderr line, `graphrun <command>: error: ...` naming `words`."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"graphrun {command}: error: "), lines[0]
    assert all(word in lines[0] for word in words), lines[0]
    assert "Traceback" not in done.stderr and "Uvicorn running" not in done.stderr + done.stdout


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another socket is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def checkpoint(folder: Path, config: dict | None = QWEN3_CONFIG, tokenizer: bool = True) -> Path:
    """A folder with the files of a checkpoint (empty weights: only names are checked up front)."""
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


# ----- graphrun serve ---------------------------------------------------------------------------------


def test_serve_refuses_a_model_path_that_does_not_exist():
    assert_refused(graphrun_cli("serve", "--model", "/nonexistent"), "serve", "'/nonexistent'", "preset")


def test_serve_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    assert_refused(graphrun_cli("serve", "--model", str(tmp_path)), "serve", "no config.json")


def test_serve_refuses_a_busy_port(busy_port):
    done = graphrun_cli("serve", "--port", str(busy_port))
    assert_refused(done, "serve", f"--port {busy_port}", "already in use")


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--max-model-len", "0"], ["max_model_len", "got 0"]),
        (["--model", "tiny", "--max-model-len", "5000"], ["--max-model-len 5000", "4096"]),
        (["--gpu-memory-utilization", "1.5"], ["gpu_memory_utilization", "(0, 1]"]),
        (["--gpu-memory-utilization", "0"], ["gpu_memory_utilization"]),
        (["--max-num-seqs", "0"], ["max_num_seqs"]),
        (["--port", "70000"], ["port", "70000"]),
    ],
)
def test_serve_refuses_impossible_settings(flags, words):
    assert_refused(graphrun_cli("serve", *flags), "serve", *words)


@no_cuda
def test_serve_checks_the_default_models_context_too():
    assert_refused(graphrun_cli("serve", "--max-model-len", "5000"), "serve", "'tiny'", "4096")


@no_cuda
def test_serve_refuses_the_cuda_backend_without_a_gpu():
    assert_refused(graphrun_cli("serve", "--graph-backend", "cuda"), "serve", "graph_backend='cuda'")


# ----- graphrun generate and bench -------------------------------------------------------------------


def test_generate_refuses_a_missing_model_and_a_too_long_context(tmp_path):
    assert_refused(
        graphrun_cli("generate", "--model", "/nonexistent", "--prompt", "hi"), "generate", "preset"
    )
    folder = checkpoint(tmp_path / "ckpt")
    (folder / "model.safetensors").write_bytes(b"")
    done = graphrun_cli("generate", "--model", str(folder), "--max-model-len", "2048", "--prompt", "hi")
    assert_refused(done, "generate", "--max-model-len 2048", "max_position_embeddings=1024")


def test_generate_refuses_a_missing_prompts_file_and_no_prompt(tmp_path):
    done = graphrun_cli("generate", "--prompts-file", str(tmp_path / "none.txt"))
    assert_refused(done, "generate", "--prompts-file", "not found")
    assert_refused(graphrun_cli("generate"), "generate", "--prompt")


def test_bench_refuses_a_missing_model_and_an_output_path_that_is_a_file(tmp_path):
    assert_refused(graphrun_cli("bench", "decode", "--model", "/nonexistent"), "bench decode", "preset")
    a_file = tmp_path / "results"
    a_file.write_text("")
    done = graphrun_cli("bench", "zoo", "--out", str(a_file / "zoo"))
    assert_refused(done, "bench zoo", "--out", "is a file")


def test_bench_serve_refuses_a_busy_port(busy_port, tmp_path):
    done = graphrun_cli("bench", "serve", "--port", str(busy_port), "--out", str(tmp_path))
    assert_refused(done, "bench serve", "already in use")


# ----- the checks themselves ------------------------------------------------------------------------


def test_checkpoint_folder_checks_name_the_missing_piece(tmp_path):
    with pytest.raises(ConfigError, match=r"no tokenizer\.json"):
        preflight.check_model(str(checkpoint(tmp_path / "a", tokenizer=False)))
    with pytest.raises(ConfigError, match=r"no \*.safetensors"):
        preflight.check_model(str(checkpoint(tmp_path / "b")))
    with pytest.raises(ConfigError, match="'BertModel' is not supported"):
        preflight.check_model(
            str(checkpoint(tmp_path / "c", {**QWEN3_CONFIG, "architectures": ["BertModel"]}))
        )
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        preflight.check_model(str(tmp_path / "d"))
    folder = checkpoint(tmp_path / "e")
    (folder / "model.safetensors").write_bytes(b"")
    assert preflight.check_model(str(folder)).max_position_embeddings == 1024
    assert preflight.check_model("tiny").max_position_embeddings == 4096


def test_a_free_port_passes_and_port_0_is_never_checked(busy_port):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    preflight.check_port_free("127.0.0.1", free)  # closed again: free
    preflight.check_port_free("127.0.0.1", 0)
    with pytest.raises(ConfigError, match="already in use"):
        preflight.check_port_free("127.0.0.1", busy_port)


def test_an_unresolvable_host_is_refused():
    with pytest.raises(ConfigError, match=r"--host 'no-such-host\.invalid'"):
        preflight.check_port_free("no-such-host.invalid", 8000)


# ----- flags that do nothing -----------------------------------------------------------------------


@pytest.fixture
def started(monkeypatch) -> list[tuple[EngineConfig, object]]:
    """Replace the server itself: run_serve's checks and warnings run, nothing is served."""
    calls: list[tuple[EngineConfig, object]] = []
    monkeypatch.setattr("graphrun.serve.cli.serve", lambda engine, srv: calls.append((engine, srv)) or 0)
    return calls


def graph_warnings(caplog) -> list[str]:
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return [m for m in messages if "does nothing" in m]


def test_graph_flags_with_enforce_eager_warn_once_each(started, caplog):
    argv = ["serve", "--port", "0", "--enforce-eager", "--cuda-graph-sizes", "1,2,4"]
    argv += ["--cuda-graph-max-bs", "8", "--cuda-graph-max-prefill-tokens", "64"]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert len(started) == 1
    warnings = graph_warnings(caplog)
    assert sorted(w.split()[0] for w in warnings) == [
        "--cuda-graph-max-bs",
        "--cuda-graph-max-prefill-tokens",
        "--cuda-graph-sizes",
    ]
    assert all("decode graphs are off (--enforce-eager is set)" in w for w in warnings)
    assert "--cuda-graph-sizes 1,2,4 does nothing" in warnings[0] + warnings[1] + warnings[2]


@no_cuda
def test_graph_flags_on_a_cpu_with_auto_warn_and_name_the_way_to_graphs(started, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["serve", "--port", "0", "--cuda-graph-max-bs", "8"]) == 0
    (warning,) = graph_warnings(caplog)
    assert warning.startswith("--cuda-graph-max-bs 8 does nothing: decode graphs are off (no CUDA device")
    assert "--graph-backend sim" in warning


def test_no_warning_when_the_flags_take_effect(started, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["serve", "--port", "0", "--graph-backend", "sim", "--cuda-graph-sizes", "1,2"]) == 0
    assert graph_warnings(caplog) == []
    assert started[0][0].cuda_graph_sizes == (1, 2)


def test_idle_flags_follow_the_reason_graphs_are_off():
    config = EngineConfig(cuda_graph_max_bs=0, cuda_graph_sizes=(1, 2))
    notes = preflight.idle_graph_flags(config, GraphsOff.MAX_BS_ZERO)
    assert notes == ["--cuda-graph-sizes 1,2 does nothing: decode graphs are off (--cuda-graph-max-bs is 0)"]
    assert preflight.idle_graph_flags(config, None) == []


def test_compile_flags_reach_the_engine_config(started, tmp_path):
    folder = str(tmp_path / "compiled")
    assert (
        main(["serve", "--port", "0", "--graph-backend", "sim", "--compile", "--compile-cache-dir", folder])
        == 0
    )
    assert started[0][0].compile is True and started[0][0].compile_cache_dir == folder


def test_compile_does_nothing_without_graphs():
    notes = preflight.idle_graph_flags(EngineConfig(cuda_graph_max_bs=0, compile=True), GraphsOff.MAX_BS_ZERO)
    assert notes == ["--compile does nothing: decode graphs are off (--cuda-graph-max-bs is 0)"]


def test_capture_flag_reaches_the_engine_config_and_does_nothing_without_graphs(started, caplog):
    assert main(["serve", "--port", "0", "--graph-backend", "sim", "--capture", "background"]) == 0
    assert started[0][0].capture == "background"
    with caplog.at_level(logging.WARNING):
        assert main(["serve", "--port", "0", "--enforce-eager", "--capture", "background"]) == 0
    assert [w.split(" does")[0] for w in graph_warnings(caplog)] == ["--capture background"]


def test_a_tensor_parallel_size_that_is_not_positive_or_does_not_split_the_model_is_refused():
    assert_refused(graphrun_cli("generate", "-tp", "0", "--prompt", "hi"), "generate", "tensor_parallel_size")
    done = graphrun_cli("generate", "--tensor-parallel-size", "3", "--prompt", "hi")
    assert_refused(done, "generate", "--tensor-parallel-size 3", "'tiny'", "num_heads", "divides 4")
    assert_refused(graphrun_cli("serve", "--model", "tiny", "-tp", "3"), "serve", "--tensor-parallel-size 3")
