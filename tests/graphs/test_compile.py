"""compile=True: graphs record inductor's code (CPU inductor here), checked against the callable, cached
on disk so that a fresh process reuses the artifacts: AOTInductor packages first, torch.compile where
export cannot take the callable."""

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
from graphrun.graphs.status import CacheUse, CompileBackend, CompileOutcome


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
    assert report.backend is CompileBackend.AOT_INDUCTOR and report.aot_refused == ""
    assert report.cache is CacheUse.OFF
    x = torch.randn(3, 8)
    torch.testing.assert_close(r.spec.fn(x), net(x))  # the package itself, outside any graph
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


def reads_an_address(x):  # like a hand-launched kernel: export traces fake tensors, which have none
    assert x.data_ptr() != 0
    return x * 2 + 1


def test_a_callable_export_cannot_take_falls_back_to_torch_compile_with_the_reason(registry, tmp_path):
    r = GraphRunner(
        reads_an_address, (torch.randn(2, 3),), backend="sim", sizes=[2], compile=True,
        compile_cache_dir=str(tmp_path), registry=registry,
    )  # fmt: skip
    report = r.status().compile
    assert report.outcome is CompileOutcome.COMPILED, report
    assert report.backend is CompileBackend.TORCH_COMPILE
    assert "Cannot access data pointer" in report.aot_refused, report
    assert "aot_inductor refused" in str(r.status())
    x = torch.randn(2, 3)
    torch.testing.assert_close(r.spec.fn(x), reads_an_address(x))
    # the refusal is remembered: a restart goes straight to torch.compile (it reads the stored reason)
    (marker,) = tmp_path.glob("*.aot-refused")
    marker.write_text("remembered\n")
    again = GraphRunner(
        reads_an_address, (torch.randn(2, 3),), backend="sim", sizes=[2], compile=True,
        compile_cache_dir=str(tmp_path), name="again", registry=registry,
    )  # fmt: skip
    second = again.status().compile
    assert second.backend is CompileBackend.TORCH_COMPILE and second.outcome is CompileOutcome.COMPILED
    assert second.aot_refused == "remembered"


def test_a_compile_that_raises_leaves_the_callable_uncompiled_with_the_reason(registry, caplog, monkeypatch):
    def broken_compile(fn, **_options):  # stands in for an inductor error at the first compiled call
        def compiled(*args, **kwargs):
            raise RuntimeError("refuses to be compiled")

        return compiled

    monkeypatch.setattr("graphrun.graphs.compile.torch.compile", broken_compile)
    with caplog.at_level("WARNING"):
        r = GraphRunner(
            reads_an_address,
            (torch.randn(2, 3),),
            backend="sim",
            sizes=[1, 2],
            compile=True,
            registry=registry,
        )
    report = r.status().compile
    assert report.outcome is CompileOutcome.FAILED
    assert "refuses to be compiled" in report.detail
    assert report.aot_refused  # export refused first, for real
    assert "runs uncompiled" in caplog.text and "AOTInductor refused" in caplog.text
    assert all(s.captured for s in r.status())  # the uncompiled callable is still captured
    x = torch.randn(2, 3)
    torch.testing.assert_close(r(x), reads_an_address(x))


def test_a_tensor_held_by_a_closure_is_never_baked_into_a_package(registry):
    scale = torch.randn(3)

    def fn(x):  # `scale` is no module's parameter: a stored package could not follow its value
        return x * scale

    r = GraphRunner(fn, (torch.randn(2, 3),), backend="sim", sizes=[2], compile=True, registry=registry)
    report = r.status().compile
    assert report.backend is CompileBackend.TORCH_COMPILE, report
    assert "is no parameter or buffer" in report.aot_refused


def test_compiled_output_that_differs_from_the_callable_is_not_used(registry):
    def fn(x):  # inductor draws its own random numbers: never equal to eager's
        return x + torch.rand_like(x)

    r = GraphRunner(
        fn, (torch.randn(4, 3),), backend="sim", sizes=[4], compile=True, verify=False, registry=registry
    )
    report = r.status().compile
    assert report.outcome is CompileOutcome.MISMATCH
    assert "output 0" in report.detail
    assert report.aot_refused.startswith("mismatch")  # AOTInductor differed first, then torch.compile


def test_a_cache_folder_needs_compile():
    with pytest.raises(ConfigError, match="compile_cache_dir"):
        GraphRunner(lambda x: x, (torch.randn(1, 2),), backend="sim", compile_cache_dir="/tmp/x")


SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from graphrun import GraphRunner

    def dynamo_graphs():  # frames dynamo compiled in this process (none without dynamo loaded)
        utils = sys.modules.get("torch._dynamo.utils")
        return 0 if utils is None else utils.counters["stats"]["unique_graphs"]

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    if sys.argv[2] == "new-weights":  # same shapes, other values (a 4-element bias: inductor inlines such)
        with torch.no_grad():
            net[0].weight.mul_(-1.5)
            net[2].bias.add_(3.0)
    r = GraphRunner(net, (torch.randn(2, 8),), backend="sim", sizes=[1, 2, 4], compile=True,
                    compile_cache_dir=sys.argv[1])
    x = torch.randn(3, 8)
    report = r.status().compile
    compiled_equal = bool(torch.allclose(r.spec.fn(x), net(x), atol=1e-5))
    with torch.no_grad():  # a weight updated in place after start-up is read by the package too
        net[2].weight.add_(0.5)
    print(json.dumps({"cache": report.cache.value, "outcome": report.outcome.value,
                      "backend": report.backend.value, "dynamo_graphs": dynamo_graphs(),
                      "compiled_equal": compiled_equal,
                      "updated_equal": bool(torch.allclose(r.spec.fn(x), net(x), atol=1e-5)),
                      "equal": bool(torch.allclose(r(x), net(x), atol=1e-5))}))
    """
)


def run_fresh_process(tmp_path: Path, cache: Path, inductor_dir: str, weights: str = "same") -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / inductor_dir), PYTHONPATH="src")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(cache), weights],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[Path, Path, dict]:
    """One first start-up (it compiles and stores the package), shared by the restart tests."""
    tmp_path = tmp_path_factory.mktemp("compile-cache")
    cache = tmp_path / "compiled"
    return tmp_path, cache, run_fresh_process(tmp_path, cache, "inductor-1")


ALL_EQUAL = {"compiled_equal": True, "updated_equal": True, "equal": True}
MISSED = {"cache": "miss", "outcome": "compiled", "backend": "aot_inductor", "dynamo_graphs": 0, **ALL_EQUAL}
# the torch.compile design re-traced with dynamo at every start-up: a hit here traces nothing
LOADED = {"cache": "hit", "outcome": "compiled", "backend": "aot_inductor", "dynamo_graphs": 0, **ALL_EQUAL}


def test_a_restart_loads_the_stored_package_without_dynamo(stored):
    tmp_path, cache, first = stored
    assert first == MISSED
    assert [p.suffix for p in cache.iterdir()] == [".pt2"]
    # a fresh process with an empty inductor cache: only the stored package can make this a hit
    second = run_fresh_process(tmp_path, cache, "inductor-2")
    assert second == LOADED


def test_a_restart_with_other_weight_values_never_runs_the_stored_ones(stored):
    tmp_path, cache, _ = stored
    # same shapes, so the same key: a package that kept the first process's weights would differ here
    # (and fall back to torch.compile on the mismatch); this one reads the live module's
    second = run_fresh_process(tmp_path, cache, "inductor-3", weights="new-weights")
    assert second == LOADED


def test_the_compile_check_allows_rounding_but_not_a_wrong_result():
    from graphrun.graphs.compile import relative_error

    want = torch.randn(64, 64).bfloat16()
    rounded = (
        want.float() * (1 + 2**-8 * torch.randn(64, 64))
    ).bfloat16()  # about one unit in the last place
    assert relative_error(rounded, want) is None
    assert "relative error" in relative_error(want.flip(0), want)
    assert relative_error(torch.tensor([1, 2]), torch.tensor([1, 3])) is not None


def test_a_batch_dim_export_cannot_keep_dynamic_gets_one_package_per_size(registry, tmp_path):
    def branchy(x):  # a branch on the batch size: one dynamic export cannot hold both sides
        return x * 2 if x.shape[0] > 2 else x * 3

    r = GraphRunner(
        branchy, (torch.randn(2, 3),), backend="sim", sizes=[2, 4], compile=True,
        compile_cache_dir=str(tmp_path), registry=registry,
    )  # fmt: skip
    report = r.status().compile
    assert report.backend is CompileBackend.AOT_INDUCTOR and report.outcome is CompileOutcome.COMPILED, report
    assert sorted(p.name.split(".", 1)[1] for p in tmp_path.glob("*.pt2")) == ["b2.pt2", "b4.pt2"]
    for n in (2, 4):
        x = torch.randn(n, 3)
        torch.testing.assert_close(r.spec.fn(x), branchy(x))
