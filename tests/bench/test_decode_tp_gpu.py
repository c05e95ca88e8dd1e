"""`graphrun bench decode --tp 1 2 --batch-sizes 1` end to end on 2 GPUs (NCCL ranks, CUDA graphs with
the collectives inside): both sizes measured, the collectives found and timed, the goals computed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from graphrun.llm.presets import preset_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        torch.cuda.device_count() < 2,
        reason=f"needs 2 CUDA devices (--tp 2: rank r on cuda:r), {torch.cuda.device_count()} visible",
    ),
]


def test_tp1_and_tp2_decode_bench_on_two_gpus(tmp_path):
    argv = ["bench", "decode", "--model", "tiny", "--tp", "1", "2", "--batch-sizes", "1", "--context", "64"]
    done = subprocess.run(
        [sys.executable, "-m", "graphrun", *argv, "--steps", "5", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = tmp_path.glob("decode-tp-*.json")
    saved = json.loads(path.read_text())
    assert saved["ok"] and saved["timings_meaningful"] and saved["backend"] == "cuda"
    rows = {(r["batch"], r["tp"]): r for r in saved["results"]}
    assert set(rows) == {(1, 1), (1, 2)}
    two = rows[1, 2]
    assert two["collectives"]["all_reduce"]["count"] == 2 * preset_config("tiny").num_layers + 1
    assert two["allreduce_ms"] > 0 and two["allreduce_share"] > 0
    assert two["graph_ms"] > 0 and two["vs_tp1"] > 0 and len(two["graph_median_ms_by_rank"]) == 2
    assert saved["engines"]["2"]["decode_graphs"] and saved["engines"]["2"]["capture_sizes"] == [1]
    assert [g["value"] is not None for g in saved["goals"]] == [True, True]
