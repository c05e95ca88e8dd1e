"""The simulator must reproduce CUDA-graph constraints, or CI tests prove nothing about the GPU."""

import pytest
import torch

from graphrun.errors import HostSyncError, UncapturableOpError
from graphrun.graphs.backends.sim import SimBackend


def _record(backend, fn, *inputs):
    out = {}

    def body():
        out["y"] = fn(*inputs)

    graph = backend.capture(body)
    return graph, out


def test_replay_recomputes_from_static_inputs():
    x = torch.randn(4, 8)
    w = torch.randn(8, 8)
    graph, out = _record(SimBackend(), lambda t: torch.relu(t @ w).softmax(-1), x)
    x.copy_(torch.randn(4, 8))
    graph.replay()
    torch.testing.assert_close(out["y"], torch.relu(x @ w).softmax(-1))


def test_addresses_are_frozen_a_new_tensor_is_not_read():
    x = torch.randn(2, 3)
    graph, out = _record(SimBackend(), lambda t: t * 2, x)
    captured = out["y"].clone()
    fresh = torch.randn(2, 3)  # the caller "forgets" to copy into the static input
    graph.replay()
    torch.testing.assert_close(out["y"], captured)  # stale: replay read x, not fresh
    assert not torch.allclose(out["y"], fresh * 2)


def test_control_flow_is_frozen_at_capture():
    state = {"double": True}
    x = torch.randn(3)

    def fn(t):
        return t * 2 if state["double"] else t + 100

    graph, out = _record(SimBackend(), fn, x)
    state["double"] = False
    graph.replay()
    torch.testing.assert_close(out["y"], x * 2)


def test_in_place_and_view_ops_replay_correctly():
    x = torch.randn(2, 6)

    def fn(t):
        y = t.clone()
        y.view(-1)[::2].mul_(3)
        return y.reshape(3, 4).t().contiguous()

    graph, out = _record(SimBackend(), fn, x)
    x.copy_(torch.randn(2, 6))
    graph.replay()
    torch.testing.assert_close(out["y"], fn(x))


def test_multi_output_and_list_ops_replay():
    x = torch.randn(5, 4)

    def fn(t):
        values, idx = t.max(dim=1)
        parts = torch.split(t, 2, dim=0)
        return values + idx.float(), torch.cat([p.sum(0, keepdim=True) for p in parts])

    graph, out = _record(SimBackend(), fn, x)
    x.copy_(torch.randn(5, 4))
    graph.replay()
    want = fn(x)
    torch.testing.assert_close(out["y"][0], want[0])
    torch.testing.assert_close(out["y"][1], want[1])


@pytest.mark.parametrize(
    "sync",
    [
        lambda t: t.sum().item(),
        lambda t: t.tolist(),
        lambda t: t.cpu(),
        lambda t: t.numpy(),
        lambda t: bool(t.sum() > 0),
        lambda t: t.nonzero(),
        lambda t: t[t > 0],
        lambda t: t.to("cpu"),
    ],
    ids=["item", "tolist", "cpu", "numpy", "bool", "nonzero", "masked_index", "to_cpu"],
)
def test_host_sync_during_capture_raises_like_cuda(sync):
    backend = SimBackend()
    x = torch.randn(4)
    backend.register_static([x])
    with pytest.raises(HostSyncError, match="operation not permitted when stream is capturing"):
        backend.capture(lambda: sync(x * 1))


def test_host_sync_outside_capture_is_fine():
    x = torch.randn(4)
    assert isinstance(x.sum().item(), float)


def test_registered_uncapturable_op_raises():
    backend = SimBackend(uncapturable=frozenset({torch.ops.aten.cumsum.default}))
    with pytest.raises(UncapturableOpError, match="cumsum"):
        backend.capture(lambda: torch.randn(3).cumsum(0))


def test_memory_accounting_counts_intermediates():
    backend = SimBackend()
    x = torch.randn(256, 256)
    graph = backend.capture(lambda: (x @ x).relu())
    assert graph.nbytes >= 2 * 256 * 256 * 4
    assert backend.pool_bytes() == graph.nbytes
    assert backend.estimate_bytes(lambda: (x @ x).relu()) == graph.nbytes


def test_may_alias_ops_that_return_fresh_tensors_replay_under_inference_mode():
    """`.float()` is aten.to.dtype under inference_mode: schema says may-alias, result is a new tensor."""
    with torch.inference_mode():
        x = torch.randint(0, 100, (4,))
        graph, out = _record(SimBackend(), lambda t: (t >> 1).float() * 0.5, x)
        x.copy_(torch.randint(0, 100, (4,)))
        graph.replay()
        torch.testing.assert_close(out["y"], (x >> 1).float() * 0.5)
