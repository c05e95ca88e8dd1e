"""compile=True: graphs record inductor's code (CPU inductor here), checked against the callable, cached
on disk so that a fresh process reuses the artifacts."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from graphrun import GraphRunner
from graphrun.errors import ConfigError
from graphrun.graphs.status import CacheUse, CompileOutcome


def make_mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def test_a_compiled_runner_replays_inductor_code_equal_to_eager(registry):
    net = make_mlp()
    r = GraphRunner(
        net, (torch.randn(2, 8),), backend="sim", sizes=[1, 2, 4], compile=True, registry=registry
    )
    report = r.status().compile
    assert report is not None and report.outcome is CompileOutcome.COMPILED, report
    assert report.cache is CacheUse.OFF
    assert r.stats.compile_seconds == report.seconds > 0
    assert all(s.captured for s in r.status())
    for n in (1, 3, 4):
        x = torch.randn(n, 8)
        torch.testing.assert_close(r(x), net(x))
    assert "compile: compiled" in str(r.status())
    seconds = registry.get_sample_value("graphrun_compile_seconds", {"runner": r.name})
    assert seconds == report.seconds
    assert registry.get_sample_value("graphrun_compile_cache_hit", {"runner": r.name}) == 0


def test_a_module_that_is_not_a_sequence_compiles(registry):
    class Block(torch.nn.Module):  # torch.compile's wrapper of it refuses len(): never test its truth
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 6)

        def forward(self, x):
            return torch.relu(self.lin(x)) + x

    net = Block().eval()
    r = GraphRunner(net, (torch.randn(2, 6),), backend="sim", sizes=[2], compile=True, registry=registry)
    assert r.status().compile.outcome is CompileOutcome.COMPILED, r.status().compile
    x = torch.randn(2, 6)
    torch.testing.assert_close(r(x), net(x))


def test_eager_fallback_above_the_top_rung_runs_the_uncompiled_callable(registry):
    calls = []

    def fn(x):
        if not torch.compiler.is_compiling():
            calls.append(x.shape[0])
        return x * 2 + 1

    r = GraphRunner(fn, (torch.randn(2, 3),), backend="sim", sizes=[1, 2], compile=True, registry=registry)
    assert r.status().compile.outcome is CompileOutcome.COMPILED
    calls.clear()
    x = torch.randn(5, 3)
    torch.testing.assert_close(r(x), x * 2 + 1)
    assert calls == [5]  # the eager path ran the plain function


def test_a_compile_that_raises_leaves_the_callable_uncompiled_with_the_reason(registry, caplog, monkeypatch):
    def broken_compile(fn, **_options):  # stands in for an inductor error at the first compiled call
        def compiled(*args, **kwargs):
            raise RuntimeError("refuses to be compiled")

        return compiled

    monkeypatch.setattr("graphrun.graphs.compile.torch.compile", broken_compile)

    def fn(x):
        return x + 1

    with caplog.at_level("WARNING"):
        r = GraphRunner(
            fn, (torch.randn(2, 3),), backend="sim", sizes=[1, 2], compile=True, registry=registry
        )
    report = r.status().compile
    assert report.outcome is CompileOutcome.FAILED
    assert "refuses to be compiled" in report.detail
    assert "runs uncompiled" in caplog.text
    assert all(s.captured for s in r.status())  # the uncompiled callable is still captured
    x = torch.randn(2, 3)
    torch.testing.assert_close(r(x), x + 1)


def test_compiled_output_that_differs_from_the_callable_is_not_used(registry):
    def fn(x):  # inductor draws its own random numbers: never equal to eager's
        return x + torch.rand_like(x)

    r = GraphRunner(
        fn, (torch.randn(4, 3),), backend="sim", sizes=[4], compile=True, verify=False, registry=registry
    )
    report = r.status().compile
    assert report.outcome is CompileOutcome.MISMATCH
    assert "output 0" in report.detail


def test_a_cache_folder_needs_compile():
    with pytest.raises(ConfigError, match="compile_cache_dir"):
        GraphRunner(lambda x: x, (torch.randn(1, 2),), backend="sim", compile_cache_dir="/tmp/x")


SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from torch._dynamo.utils import counters
    from graphrun import GraphRunner
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    r = GraphRunner(net, (torch.randn(2, 8),), backend="sim", sizes=[1, 2, 4], compile=True,
                    compile_cache_dir=sys.argv[1])
    x = torch.randn(3, 8)
    report = r.status().compile
    print(json.dumps({"cache": report.cache.value, "outcome": report.outcome.value,
                      "fx_hits": counters["inductor"]["fxgraph_cache_hit"],
                      "equal": bool(torch.allclose(r(x), net(x), atol=1e-5))}))
    """
)


def run_fresh_process(tmp_path: Path, cache: Path, inductor_dir: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / inductor_dir), PYTHONPATH="src")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(cache)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_restart_reuses_the_stored_artifacts(tmp_path):
    cache = tmp_path / "compiled"
    first = run_fresh_process(tmp_path, cache, "inductor-1")
    assert first == {"cache": "miss", "outcome": "compiled", "fx_hits": 0, "equal": True}
    assert len(list(cache.iterdir())) == 1
    # a fresh process with an empty inductor cache: only the stored artifacts can make these hits
    second = run_fresh_process(tmp_path, cache, "inductor-2")
    assert second["cache"] == "hit" and second["outcome"] == "compiled" and second["equal"]
    assert second["fx_hits"] >= 1
