"""Real CUDA graphs: replay == eager for every rung and padded size, and the fallback paths on the device."""

import pytest
import torch
from prometheus_client import CollectorRegistry

from graphrun import CallFallback, CaptureFailure, GraphRunner
from graphrun.graphs.backends.cuda import CudaBackend

pytestmark = pytest.mark.gpu


def mlp(dtype):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.GELU(),
        torch.nn.Linear(256, 256),
        torch.nn.LayerNorm(256),
        torch.nn.Linear(256, 32),
    )
    return net.to("cuda", dtype).eval().requires_grad_(False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_replay_equals_eager_for_every_rung_and_padded_size(dtype):
    net = mlp(dtype)
    r = GraphRunner(
        net,
        (torch.randn(4, 64, device="cuda", dtype=dtype),),
        max_batch_size=32,
        registry=CollectorRegistry(),
        name="gpu-mlp",
    )
    assert r.backend.name == "cuda"
    # row-independent: the padded check must keep padding despite per-shape kernel rounding (tolerance)
    assert all(s.captured and s.padded for s in r.status()), str(r.status())
    tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}[dtype]
    for n in range(1, 33):
        x = torch.randn(n, 64, device="cuda", dtype=dtype)
        got = r(x).clone()
        want = net(x)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert r.stats.num_replayed == 32
    assert r.stats.eager_fallback == {}


def test_attention_model_pytree_outputs():
    torch.manual_seed(0)
    layer = (
        torch.nn.TransformerEncoderLayer(128, 4, 256, batch_first=True).cuda().eval().requires_grad_(False)
    )

    def fn(x, mask_bias):
        h = layer(x)
        return {"h": h, "pooled": (h + mask_bias).mean(1)}

    x = torch.randn(8, 16, 128, device="cuda")
    bias = torch.randn(128, device="cuda")
    r = GraphRunner(fn, (x, bias), batch_dims=(0, None), sizes=[1, 2, 4, 8], registry=CollectorRegistry())
    assert all(s.captured for s in r.status())
    for n in (1, 3, 5, 8):
        x = torch.randn(n, 16, 128, device="cuda")
        got = r(x, bias)
        want = fn(x, bias)
        torch.testing.assert_close(got["h"], want["h"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got["pooled"], want["pooled"], rtol=1e-4, atol=1e-4)


def test_host_sync_fails_capture_and_leaves_the_device_usable():
    def bad(x):
        return x / x.abs().max().item()

    r = GraphRunner(bad, (torch.randn(4, 8, device="cuda"),), sizes=[2, 4], registry=CollectorRegistry())
    assert {s.reason for s in r.status()} == {CaptureFailure.HOST_SYNC}, r.status()
    x = torch.randn(3, 8, device="cuda")
    torch.testing.assert_close(r(x), bad(x))
    assert r.stats.eager_fallback == {CallFallback.RUNG_NOT_CAPTURED: 1}
    good = GraphRunner(
        lambda t: t * 2, (torch.randn(2, 8, device="cuda"),), sizes=[2], registry=CollectorRegistry()
    )
    assert good.status()[0].captured
    torch.testing.assert_close(good(x[:2]), x[:2] * 2)


def test_verification_catches_control_flow_frozen_on_host_data():
    """A loop over a CPU tensor's values is legal during capture, and frozen: verification must catch it."""

    def fn(x, lengths):  # lengths lives on the CPU, like per-step attention metadata
        mask = torch.ones_like(x)
        for i, length in enumerate(lengths.tolist()):
            mask[i, length:] = 0
        return x * mask

    lengths = torch.tensor([1, 7, 3, 5])  # verification draws new lengths from 1..7 (1 in 2401 to repeat)
    r = GraphRunner(
        fn,
        (torch.randn(4, 8, device="cuda"), lengths),
        batch_dims=(0, None),
        sizes=[4],
        registry=CollectorRegistry(),
    )
    (status,) = r.status()
    assert not status.captured and status.reason is CaptureFailure.VERIFICATION, status


class BrokenReplays(CudaBackend):
    """Real CUDA captures whose replays raise, as a graph broken after capture would."""

    def capture(self, body, label=""):
        graph = super().capture(body, label)

        def broken() -> None:
            raise RuntimeError("injected replay failure")

        graph.replay = broken
        return graph


def test_replay_error_falls_back_for_that_call():
    r = GraphRunner(
        lambda t: t + 1,
        (torch.randn(2, 8, device="cuda"),),
        sizes=[2],
        backend=BrokenReplays(),
        verify=False,  # verification would replay the broken graph and leave the rung eager
        registry=CollectorRegistry(),
    )
    assert r.status()[0].captured
    x = torch.randn(2, 8, device="cuda")
    torch.testing.assert_close(r(x), x + 1)
    assert r.stats.eager_fallback == {CallFallback.REPLAY_ERROR: 1}


def test_memory_budget_on_the_device():
    net = mlp(torch.float32)
    x = torch.randn(512, 64, device="cuda")
    r = GraphRunner(net, (x,), sizes=[8, 512], memory_budget_bytes=64 * 1024, registry=CollectorRegistry())
    status = {s.size: s for s in r.status()}
    assert status[512].reason is CaptureFailure.MEMORY_BUDGET
    assert status[8].captured


def test_ladder_pool_is_close_to_the_top_rung_alone():
    net = mlp(torch.float16)
    x = torch.randn(256, 64, device="cuda", dtype=torch.float16)
    top = GraphRunner(net, (x,), sizes=[256], registry=CollectorRegistry())
    top_bytes = top.backend.pool_bytes()
    top.close()
    ladder = GraphRunner(net, (x,), sizes=[1, 2, 4, 8, 16, 32, 64, 128, 256], registry=CollectorRegistry())
    assert all(s.captured for s in ladder.status())
    assert ladder.backend.pool_bytes() <= 2 * max(top_bytes, 2 * 2**20), (
        ladder.backend.pool_bytes(),
        top_bytes,
    )


def batch_coupled(name):
    torch.manual_seed(0)
    if name == "batch_norm_train":
        return torch.nn.BatchNorm1d(64).cuda().train()
    if name == "batch_mean":
        return lambda x: x - x.mean(0, keepdim=True)
    return lambda x: torch.softmax(x, dim=0)


@pytest.mark.parametrize("name", ["batch_mean", "softmax_over_batch", "batch_norm_train"])
def test_batch_coupled_functions_equal_eager_at_every_batch_size(name):
    fn = batch_coupled(name)
    r = GraphRunner(
        fn, (torch.randn(16, 64, device="cuda"),), max_batch_size=16, registry=CollectorRegistry(), name=name
    )
    assert r.backend.name == "cuda"
    status = {s.size: s for s in r.status()}
    for rung in (4, 8, 16):  # they would serve smaller batches padded: found coupled, exact sizes only
        assert status[rung].captured and status[rung].reason is CaptureFailure.PADDING_MISMATCH, str(
            r.status()
        )
    first = 2 if name == "batch_norm_train" else 1  # eager batch-norm refuses one row in training
    for n in range(first, 17):
        x = torch.randn(n, 64, device="cuda")
        torch.testing.assert_close(r(x).clone(), fn(x), rtol=1e-4, atol=1e-5)
    assert r.stats.num_padded_rows == 0
    assert r.stats.eager_fallback.get(CallFallback.PADDING_MISMATCH, 0) > 0


def test_outputs_carry_no_autograd_history_on_the_device():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).cuda()
    assert all(p.requires_grad for p in net.parameters())
    r = GraphRunner(net, (torch.randn(8, 64, device="cuda"),), sizes=[4, 8], registry=CollectorRegistry())
    for n in (3, 8, 12):  # padded replay, exact replay, eager above the top rung
        y = r(torch.randn(n, 64, device="cuda"))
        assert not y.requires_grad and y.grad_fn is None and not y.is_inference()
    assert r.stats.num_replayed == 2
    kept = GraphRunner(
        net,
        (torch.randn(8, 64, device="cuda"),),
        sizes=[8],
        registry=CollectorRegistry(),
        inference_mode=False,
    )
    assert kept(torch.randn(12, 64, device="cuda")).grad_fn is not None


def test_compiled_graphs_equal_eager_on_the_device():
    from graphrun.graphs.status import CompileOutcome

    class Block(torch.nn.Module):  # not a Sequential: no __len__ to lean on
        def __init__(self):
            super().__init__()
            self.up, self.down = torch.nn.Linear(256, 1024), torch.nn.Linear(1024, 256)

        def forward(self, x):
            return x + self.down(torch.nn.functional.gelu(self.up(torch.nn.functional.layer_norm(x, (256,)))))

    torch.manual_seed(0)
    net = Block().cuda().eval()
    r = GraphRunner(net, (torch.randn(8, 256, device="cuda"),), sizes=[1, 2, 4, 8], compile=True,
                    registry=CollectorRegistry())  # fmt: skip
    assert r.status().compile.outcome is CompileOutcome.COMPILED, r.status().compile
    assert all(s.captured for s in r.status())
    for n in (1, 3, 8):
        x = torch.randn(n, 256, device="cuda")
        torch.testing.assert_close(r(x), net(x), rtol=1e-4, atol=1e-4)


# ----- piecewise --------------------------------------------------------------------------------------


def test_piecewise_mlp_with_a_marked_op_equals_eager_on_cuda():
    from piecewise_models import Gate, GatedMLP

    from graphrun.graphs.piecewise import mark_uncapturable, unmark_uncapturable

    mark_uncapturable(Gate)
    try:
        torch.manual_seed(0)
        model = GatedMLP().cuda().eval()
        run = GraphRunner(model, (torch.randn(4, 8, device="cuda"),), sizes=[1, 2, 4], mode="piecewise",
                          backend="cuda", registry=CollectorRegistry(), name="gpu-piecewise-mlp")  # fmt: skip
        assert all(r.captured for r in run.status()) and run.status().splits
        with torch.no_grad():
            for n in (1, 2, 3, 4):
                x = torch.randn(n, 8, device="cuda")
                torch.testing.assert_close(run(x), model(x))
        assert run.stats.num_replayed == 4
    finally:
        unmark_uncapturable(Gate)


def test_piecewise_hf_bert_equals_eager_on_cuda():
    from piecewise_models import HFEncoder

    torch.manual_seed(0)
    model = HFEncoder().cuda()

    def make(n):
        return torch.randint(0, 64, (n, 8), device="cuda"), torch.ones(n, 8, dtype=torch.long, device="cuda")

    run = GraphRunner(model, make(4), sizes=[1, 2, 4], mode="piecewise", backend="cuda",
                      registry=CollectorRegistry(), name="gpu-piecewise-bert")  # fmt: skip
    assert all(r.captured for r in run.status()), str(run.status())
    with torch.no_grad():
        for n in (1, 2, 3, 4):
            args = make(n)
            torch.testing.assert_close(run(*args), model(*args), rtol=1e-4, atol=1e-4)
    assert run.stats.num_replayed == 4


def test_compiled_piecewise_segments_equal_eager_on_the_device():
    from graphrun import mark_uncapturable
    from graphrun.graphs.piecewise import unmark_uncapturable
    from graphrun.graphs.status import CompileOutcome

    class Sync(torch.nn.Module):  # a host read between two halves: FULL cannot capture it
        def forward(self, x):
            return x * (1.0 + 0.0 * float(x.sum()))

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), Sync(), torch.nn.Linear(64, 64))
    net = net.cuda().eval()
    mark_uncapturable(Sync)
    try:
        r = GraphRunner(net, (torch.randn(4, 64, device="cuda"),), sizes=[1, 2, 4], mode="piecewise",
                        compile=True, registry=CollectorRegistry())  # fmt: skip
        assert r.status().compile.outcome is CompileOutcome.COMPILED, r.status().compile
        assert all(s.captured for s in r.status()), str(r.status())
        with torch.no_grad():
            for n in (1, 3, 4):
                x = torch.randn(n, 64, device="cuda")
                torch.testing.assert_close(r(x), net(x), rtol=1e-4, atol=1e-4)
    finally:
        unmark_uncapturable(Sync)
