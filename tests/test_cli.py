"""The command line on a CPU machine: doctor (table and JSON), the demo, and `python -m graphrun`."""

import json
import re
import subprocess
import sys

import pytest
import torch

from graphrun.cli import main

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA report and the sim demo")


@no_cuda
def test_doctor_table_says_no_cuda_and_probe_ok(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device" in out
    assert re.search(r"^torch\s+: " + re.escape(torch.__version__) + "$", out, re.MULTILINE)
    assert re.search(r"^probe \(sim\)\s+: ok:", out, re.MULTILINE)
    assert re.search(r"^launch cost\s+: skipped", out, re.MULTILINE)


@no_cuda
def test_doctor_json_is_one_object_with_versions_and_probe(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds the JSON alone; logs go to stderr
    assert report["torch"] == torch.__version__
    assert report["python"] == ".".join(map(str, sys.version_info[:3]))
    assert report["cuda_available"] is False
    assert report["device"] is None
    assert report["probe"]["backend"] == "sim"
    assert report["probe"]["ok"] is True
    assert report["probe"]["max_abs_diff"] < 1e-5
    assert report["launch_cost"] is None
    assert "no CUDA" in report["launch_cost_skipped"]
    assert {"torch_cuda", "cudnn", "nvidia_driver", "graphrun"} <= report.keys()


@no_cuda
def test_demo_table_shows_rungs_and_counted_eager_fallback_above_top_rung(capsys):
    assert main(["demo", "--calls", "5"]) == 0
    out = capsys.readouterr().out
    rows = {
        int(m.group(1)): (m.group(2), m.group(3))
        for m in re.finditer(
            r"^\s*(\d+)\s+(\d+|eager)\s+[\d.]+\s+[\d.]+\s+[\d.]+x\s+\S+\s+(\S+)$", out, re.MULTILINE
        )
    }
    assert rows == {1: ("1", "ok"), 3: ("4", "ok"), 8: ("8", "ok"), 32: ("32", "ok"), 40: ("eager", "ok")}
    assert "sim backend reproduces graph semantics, not speed" in out
    assert re.search(r"^rung 32: captured", out, re.MULTILINE)
    fallbacks = re.search(r"^eager fallbacks: above_top_rung=(\d+)$", out, re.MULTILINE)
    assert fallbacks is not None and int(fallbacks.group(1)) >= 5
    assert "capture failures: none" in out


@no_cuda
def test_demo_rejects_cuda_backend_without_a_gpu(capsys):
    assert main(["demo", "--backend", "cuda", "--calls", "1"]) == 2
    assert "--backend sim" in capsys.readouterr().err


@pytest.mark.gpu
def test_doctor_json_on_a_gpu_probes_cuda_and_measures_launch_cost(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cuda_available"] is True
    assert report["device"]["compute_capability"]
    assert report["probe"] == {**report["probe"], "backend": "cuda", "ok": True}
    cost = report["launch_cost"]
    assert cost["num_launches"] == 200
    assert 0 < cost["graph_us_per_launch"] < cost["eager_us_per_launch"]


def test_python_dash_m_graphrun_help():
    done = subprocess.run(
        [sys.executable, "-m", "graphrun", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    for command in ("demo", "doctor", "bench"):
        assert command in done.stdout


def test_generate_prints_each_completion(capsys):
    from graphrun.cli import main

    rc = main(
        [
            "--log-level",
            "WARNING",
            "generate",
            "--prompt",
            "Hi",
            "--prompt",
            "there",
            "--max-tokens",
            "4",
            "--ignore-eos",
            "--json",
            "--max-model-len",
            "64",
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["prompt"] for r in rows] == ["Hi", "there"]
    assert all(len(r["token_ids"]) == 4 and r["finish_reason"] == "length" for r in rows)


def test_generate_without_prompts_is_a_usage_error(capsys):
    from graphrun.cli import main

    assert main(["generate"]) == 2
    assert "at least one --prompt" in capsys.readouterr().err


def test_generate_on_two_tensor_parallel_ranks_prints_what_one_rank_does():
    def generate(tp: str) -> list[dict]:
        done = subprocess.run(
            [sys.executable, "-m", "graphrun", "--log-level", "WARNING", "generate", "-tp", tp,
             "--prompt", "Hi", "--prompt", "a longer prompt", "--max-tokens", "12", "--ignore-eos", "--json"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    two = generate("2")
    assert len(two) == 2 and all(len(row["token_ids"]) == 12 for row in two)
    assert two == generate("1")
