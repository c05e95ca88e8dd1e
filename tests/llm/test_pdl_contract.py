"""Every kernel launched with programmatic dependent launch keeps kernels/pdl.py's contract, checked in
the PTX Triton compiles for sm_90 (no GPU needed): one griddepcontrol.wait, no global store before it,
before it only loads of weights (and the projections do load their first weight tile there: that is
where PDL pays), and griddepcontrol.launch_dependents only after it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia.compiler")

# the pointers each kernel may read before its wait: weights, which nothing writes during a step
WEIGHTS = {
    "gemv": ["w_ptr"],
    "gemv_silu_mul": ["w_ptr"],
    "norm_gemv_silu_mul": ["w_ptr"],
    "skinny_logits": ["w_ptr"],
    "add_rmsnorm": ["w_ptr"],
    "qk_norm_rope_write": ["kw_ptr", "qw_ptr"],
    "paged_decode_split": [],
    "paged_decode_split_rope": [],
    "paged_decode_merge": [],
    "paged_varlen": [],
    "silu_mul": [],
    "logprobs_stats": [],
    "logprobs_select": [],
    "logprobs_merge": [],
    "sample_split": [],
    "sample_finish": [],
}


@pytest.fixture(scope="module")
def report() -> dict:
    """pdl_ptx.py's report, from a process whose Triton compiles (not interpreted)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    script = Path(__file__).with_name("pdl_ptx.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_pdl_kernel_is_checked(report):
    assert sorted(report) == sorted(WEIGHTS)


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_kernel_waits_once_before_any_store_or_trigger(report, name):
    kernel = report[name]
    assert kernel["waits"] == 1
    assert kernel["stores_before_wait"] == 0
    assert kernel["launches"] == 1 and not kernel["launch_before_wait"]


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_kernel_reads_only_weights_before_its_wait(report, name):
    assert report[name]["pre_wait_pointers"] == WEIGHTS[name]
