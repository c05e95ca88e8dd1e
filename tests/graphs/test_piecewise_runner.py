"""Piecewise graphs on the simulator: each model's replays equal eager at every rung and padded size."""

import pytest
import torch
import torch.nn.functional as F
from piecewise_models import (
    Block,
    Compact,
    CompactThenReduce,
    Gate,
    GatedMLP,
    HFEncoder,
    ScaledByMax,
    untraceable,
)
from prometheus_client import CollectorRegistry

from graphrun import GraphRunner, mark_uncapturable
from graphrun.errors import UncapturableOpError
from graphrun.graphs.backends import SimBackend
from graphrun.graphs.piecewise import unmark_uncapturable
from graphrun.graphs.status import CallFallback, CaptureFailure


@pytest.fixture
def marked():
    """Mark targets for one test, unmark them after."""
    targets = []

    def mark(target):
        mark_uncapturable(target)
        targets.append(target)

    yield mark
    for target in targets:
        unmark_uncapturable(target)


def runner(fn, example, mode="piecewise", **options):
    args = example if isinstance(example, tuple) else (example,)
    options.setdefault("sizes", [1, 2, 4])
    options.setdefault("backend", "sim")
    return GraphRunner(fn, args, mode=mode, registry=CollectorRegistry(), **options)


def check_equals_eager(run, fn, make, sizes=(1, 2, 3, 4)):
    """Every batch size replays a graph (counted) and matches eager."""
    for n in sizes:
        before = run.stats.num_replayed
        args = make(n)
        torch.testing.assert_close(run(*args), fn(*args))
        assert run.stats.num_replayed == before + 1, f"batch {n} did not replay"


def test_mlp_with_a_marked_module_splits_there_and_equals_eager(marked):
    marked(Gate)
    torch.manual_seed(0)
    model = GatedMLP().eval()
    run = runner(model, torch.randn(4, 8))
    status = run.status()
    assert all(r.captured for r in status), str(status)
    assert status.mode == "piecewise"
    assert [s.split(" ")[0] for s in status.splits] == ["gate"]
    with torch.no_grad():
        check_equals_eager(run, model, lambda n: (torch.randn(n, 8),))


def test_unmarked_mlp_is_one_segment():
    model = GatedMLP().eval()
    run = runner(model, torch.randn(4, 8))
    assert run.status().splits == ()
    assert all(r.captured for r in run.status())


def test_transformer_block_with_attention_marked(marked):
    marked(F.scaled_dot_product_attention)
    torch.manual_seed(0)
    block = Block().eval()
    run = runner(block, torch.randn(4, 6, 16))
    assert all(r.captured for r in run.status()), str(run.status())
    assert any("scaled_dot_product_attention" in s for s in run.status().splits)
    with torch.no_grad():
        check_equals_eager(run, block, lambda n: (torch.randn(n, 6, 16),))


def test_data_dependent_item_is_found_automatically():
    torch.manual_seed(0)
    model = ScaledByMax().eval()
    full = runner(model, torch.randn(4, 8), mode="full")
    assert {r.reason for r in full.status()} == {CaptureFailure.HOST_SYNC}
    run = runner(model, torch.randn(4, 8))
    splits = run.status().splits
    assert any(s.startswith("item (host_sync") for s in splits), splits
    assert all(r.captured for r in run.status()), str(run.status())
    with torch.no_grad():
        check_equals_eager(run, model, lambda n: (torch.randn(n, 8),))


def test_segment_boundaries_are_static_buffers_not_copies(marked):
    """The tensor the marked op reads is the one the first segment's graph writes."""
    marked(Gate)
    model = GatedMLP().eval()
    seen = []
    hook = model.gate.register_forward_hook(lambda m, args, out: seen.append(args[0].data_ptr()))
    run = runner(model, torch.randn(4, 8), sizes=[4])
    seen.clear()
    with torch.no_grad():
        run(torch.randn(4, 8))
        run(torch.randn(4, 8))
    hook.remove()
    assert len(seen) == 2 and seen[0] == seen[1]


@pytest.mark.parametrize("mark_attention", [False, True])
def test_hf_bert_that_full_capture_cannot_take(marked, mark_attention):
    if mark_attention:  # export records aten.scaled_dot_product_attention: one split per layer
        marked(torch.ops.aten.scaled_dot_product_attention)
    torch.manual_seed(0)
    model = HFEncoder()

    def make(n):
        return torch.randint(0, 64, (n, 8)), torch.ones(n, 8, dtype=torch.long)

    full = runner(model, make(4), mode="full")
    assert not any(r.captured for r in full.status()), str(full.status())
    run = runner(model, make(4))
    assert all(r.captured for r in run.status()), str(run.status())
    attention_splits = [s for s in run.status().splits if "scaled_dot_product_attention" in s]
    assert len(attention_splits) == (2 if mark_attention else 0)
    with torch.no_grad():
        check_equals_eager(run, model, make)


def test_a_batch_of_one_example_still_traces_with_a_dynamic_batch(marked):
    """export specializes a size-1 dim: an example of batch 1 is traced on the top rung's buffers instead."""
    torch.manual_seed(0)
    model = HFEncoder()

    def make(n):
        return torch.randint(0, 64, (n, 8)), torch.ones(n, 8, dtype=torch.long)

    run = runner(model, make(1), sizes=[1, 2, 4])
    assert all(r.captured for r in run.status()), str(run.status())
    with torch.no_grad():
        check_equals_eager(run, model, make)


def test_an_untraceable_call_falls_back_with_its_reason():
    run = runner(untraceable, torch.randn(4, 8))
    status = run.status()
    assert {r.reason for r in status} == {CaptureFailure.UNTRACEABLE}
    assert "fx:" in status[0].detail and "export:" in status[0].detail
    x = torch.randn(3, 8)
    torch.testing.assert_close(run(x), untraceable(x))
    assert run.stats.eager_fallback == {CallFallback.UNTRACEABLE: 1}


def test_piecewise_metrics_carry_the_mode():
    registry = CollectorRegistry()
    GraphRunner(
        GatedMLP().eval(), (torch.randn(2, 8),), mode="piecewise", backend="sim", registry=registry, name="pw"
    )
    assert registry.get_sample_value("graphrun_cuda_graph_mode", {"runner": "pw", "mode": "piecewise"}) == 1


def test_data_dependent_shapes_are_found_and_split(marked):
    marked(Compact)
    torch.manual_seed(0)
    model = CompactThenReduce().eval()
    run = runner(model, torch.randn(4, 8))
    reasons = {s.split(" ")[0]: s for s in run.status().splits}
    assert "dynamic_shape" in reasons.get("c", ""), reasons  # reads the compacted rows
    assert all(r.captured for r in run.status()), str(run.status())
    with torch.no_grad():  # the sum over kept rows couples rows: exact sizes only (padding verified)
        check_equals_eager(run, model, lambda n: (torch.randn(n, 8),), sizes=(1, 2, 4))


def test_a_split_input_that_changes_shape_runs_that_call_eager(marked):
    marked(Gate)
    model = GatedMLP().eval()
    run = runner(model, torch.randn(4, 8), sizes=[4])
    with torch.no_grad():
        x = torch.randn(4, 8)
        original = model.gate.forward
        model.gate.forward = lambda h: original(h)[:2]  # the eager split now returns 2 rows, not 4
        try:
            run(x)
        finally:
            model.gate.forward = original
    assert run.stats.eager_fallback == {CallFallback.DYNAMIC_SHAPE: 1}


class RefusesOneSegment(SimBackend):
    """A simulator whose capture of one segment fails the way CUDA's would (the analysis cannot see it)."""

    def __init__(self, label):
        super().__init__()
        self.refused = label

    def capture(self, body, label=""):
        if self.refused in label:
            raise UncapturableOpError(f"operator refused by the device in {label}")
        return super().capture(body, label)


def test_a_segment_whose_capture_fails_runs_eager_and_the_rest_stays_captured(marked):
    marked(Gate)
    model = GatedMLP().eval()
    run = runner(model, torch.randn(4, 8), backend=RefusesOneSegment("submod_2"))
    assert all(r.captured for r in run.status()), str(run.status())
    assert any(
        s.startswith("submod_2") and "segment failed to capture: uncapturable_op" in s
        for s in run.status().splits
    )
    with torch.no_grad():
        check_equals_eager(run, model, lambda n: (torch.randn(n, 8),))


def test_a_size_where_no_segment_captures_runs_eager():
    model = GatedMLP().eval()  # unmarked: one segment, refused
    run = runner(model, torch.randn(4, 8), backend=RefusesOneSegment("submod_0"))
    assert not any(r.captured for r in run.status())
    assert {r.reason for r in run.status()} == {CaptureFailure.SEGMENT_NOT_CAPTURED}


class WithKeyword(GatedMLP):
    def forward(self, x, shift=None):
        return super().forward(x + shift)


def test_keyword_inputs_reach_the_traced_graph(marked):
    marked(Gate)
    torch.manual_seed(0)
    model = WithKeyword().eval()
    example = (torch.randn(4, 8),), {"shift": torch.randn(4, 8)}
    run = GraphRunner(
        model, *example, sizes=[2, 4], mode="piecewise", backend="sim", registry=CollectorRegistry()
    )
    assert all(r.captured for r in run.status()) and run.status().splits
    with torch.no_grad():
        x, shift = torch.randn(3, 8), torch.randn(3, 8)
        torch.testing.assert_close(run(x, shift=shift), model(x, shift=shift))
    assert run.stats.num_replayed == 1


def test_piecewise_without_a_graph_backend_runs_eager():
    run = runner(GatedMLP().eval(), torch.randn(4, 8), backend="auto")  # CPU tensors: no graphs
    assert {r.reason for r in run.status()} == {CaptureFailure.NO_GRAPH_BACKEND}


def test_compile_compiles_the_segments_and_leaves_the_split_eager(marked):
    from torch._dynamo.utils import counters

    from graphrun.graphs.status import CompileOutcome

    marked(Gate)
    torch.manual_seed(0)
    model = GatedMLP().eval()
    frames = counters["frames"]["ok"]
    run = runner(model, torch.randn(4, 8), compile=True)
    assert counters["frames"]["ok"] > frames  # dynamo compiled the segments' code
    report = run.status().compile
    assert report is not None and report.outcome is CompileOutcome.COMPILED, report
    segments = run.spec.fn.fn.segments  # CompiledFn -> the piecewise callable
    assert segments and all(s.compiled is not None and not s.use_compiled for s in segments)
    assert all(r.captured for r in run.status()), str(run.status())
    with torch.no_grad():
        check_equals_eager(run, model, lambda n: (torch.randn(n, 8),))
