"""GraphRunner behaviour through the simulator: ladder, padding, slicing, pytrees, scalars, aliasing."""

import pytest
import torch

from graphrun import CallFallback, FaultPlan, GraphRunner, SimBackend
from graphrun.errors import ConfigError, StaticValueError


def make_mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def runner_for(fn, example, registry, **kw):
    kw.setdefault("backend", "sim")
    return GraphRunner(fn, example, registry=registry, **kw)


def test_default_ladder_from_max_batch_size(registry):
    r = runner_for(make_mlp(), (torch.randn(2, 8),), registry, max_batch_size=20)
    assert r.sizes == (1, 2, 4, 8, 16, 20)
    assert all(s.captured for s in r.status())
    assert [s.size for s in r.status()] == [1, 2, 4, 8, 16, 20]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8])
def test_every_batch_pads_to_its_rung_and_matches_eager(registry, n):
    net = make_mlp()
    r = runner_for(net, (torch.randn(1, 8),), registry, sizes=[1, 2, 4, 8])
    x = torch.randn(n, 8)
    y = r(x)
    assert y.shape == (n, 4)
    torch.testing.assert_close(y, net(x))
    assert r.stats.num_replayed == 1
    assert r.stats.num_padded_rows == {1: 0, 2: 0, 3: 1, 5: 3, 7: 1, 8: 0}[n]


def test_padding_repeats_last_row_by_default_and_fills_value_when_asked(registry):
    seen = {}

    def fn(x):
        seen["x"] = x
        return x * 1

    r = runner_for(fn, (torch.randn(4, 2),), registry, sizes=[4])
    x = torch.randn(3, 2)
    r(x)
    static = r.slots[0].views[4]
    torch.testing.assert_close(static[3], x[2])
    r2 = runner_for(fn, (torch.randn(4, 2),), registry, sizes=[4], pad=-7.0, name="filled")
    r2(x)
    assert torch.all(r2.slots[0].views[4][3] == -7.0)


def test_pytree_inputs_and_outputs_with_kwargs(registry):
    def fn(inputs, *, scale):
        h = inputs["x"] @ inputs["w"]
        return {"h": h * scale, "pair": (h.sum(-1), inputs["x"].mean())}

    x, w, scale = torch.randn(4, 3), torch.randn(3, 5), torch.randn(1)
    r = runner_for(
        fn,
        ({"x": x, "w": w},),
        registry,
        example_kwargs={"scale": scale},
        batch_dims=({"x": 0, "w": None},),
        kwarg_batch_dims={"scale": None},
        sizes=[2, 4],
    )
    x2, w2, s2 = torch.randn(3, 3), torch.randn(3, 5), torch.randn(1)
    out = r({"x": x2, "w": w2}, scale=s2)
    want = fn({"x": x2, "w": w2}, scale=s2)
    assert set(out) == {"h", "pair"} and out["h"].shape == (3, 5)
    torch.testing.assert_close(out["h"], want["h"])
    torch.testing.assert_close(out["pair"][0], want["pair"][0])
    # a non-batched output (a mean over the batch) couples rows: rung 4 replays exact sizes only, so the
    # batch of 3 ran eager and the mean is over its own 3 rows
    torch.testing.assert_close(out["pair"][1], want["pair"][1])
    assert r.stats.eager_fallback == {CallFallback.PADDING_MISMATCH: 1}


def test_disagreeing_batch_sizes_name_each_input(registry):
    with pytest.raises(ConfigError, match=r"args\[0\]: 4, kwargs\['s'\]: 1.*kwarg_batch_dims"):
        runner_for(lambda x, s: x * s, (torch.randn(4, 2),), registry, example_kwargs={"s": torch.ones(1)})


def test_shared_input_is_copied_every_call(registry):
    def fn(x, w):
        return x @ w

    x, w = torch.randn(2, 3), torch.randn(3, 3)
    r = runner_for(fn, (x, w), registry, batch_dims=(0, None), sizes=[2])
    w_new = torch.randn(3, 3)
    torch.testing.assert_close(r(x, w_new), x @ w_new)


def test_batch_dim_other_than_zero(registry):
    def fn(x):  # (seq, batch, dim)
        return x.sum(0)

    r = runner_for(fn, (torch.randn(5, 4, 3),), registry, batch_dims=1, sizes=[4])
    x = torch.randn(5, 3, 3)
    torch.testing.assert_close(r(x)[:3], x.sum(0))


def test_static_scalar_mismatch_is_a_clear_error(registry):
    def fn(x, scale):
        return x * scale

    r = runner_for(fn, (torch.randn(2, 2), 2.0), registry, sizes=[2])
    torch.testing.assert_close(r(torch.ones(2, 2), 2.0), torch.full((2, 2), 2.0))
    with pytest.raises(StaticValueError, match=r"args\[1\].*captured with 2.0.*got 3.0.*scalars='tensor'"):
        r(torch.ones(2, 2), 3.0)


def test_tensor_scalars_are_dynamic(registry):
    def fn(x, scale):
        return x * scale

    r = runner_for(fn, (torch.randn(2, 2), 2.0), registry, sizes=[2], scalars="tensor")
    torch.testing.assert_close(r(torch.ones(2, 2), 3.0), torch.full((2, 2), 3.0))
    torch.testing.assert_close(r(torch.ones(2, 2), -1.5), torch.full((2, 2), -1.5))
    assert r.stats.num_replayed == 2


def test_outputs_alias_static_buffers_until_next_call(registry):
    net = make_mlp()
    r = runner_for(net, (torch.randn(2, 8),), registry, sizes=[2])
    a, b = torch.randn(2, 8), torch.randn(2, 8)
    ya = r(a)
    snapshot = ya.clone()
    yb = r(b)
    assert ya.data_ptr() == yb.data_ptr()
    torch.testing.assert_close(ya, net(b))  # overwritten by the second call
    assert not torch.allclose(ya, snapshot)


def test_clone_outputs_gives_owned_tensors(registry):
    net = make_mlp()
    r = runner_for(net, (torch.randn(2, 8),), registry, sizes=[2], clone_outputs=True)
    a, b = torch.randn(2, 8), torch.randn(2, 8)
    ya = r(a)
    yb = r(b)
    assert ya.data_ptr() != yb.data_ptr()
    torch.testing.assert_close(ya, net(a))


def test_zero_copy_static_inputs(registry):
    net = make_mlp()
    r = runner_for(net, (torch.randn(4, 8),), registry, sizes=[2, 4])
    (x,), _ = r.static_inputs(3)
    assert x.shape == (3, 8)
    x.copy_(torch.randn(3, 8))
    y = r(x)
    torch.testing.assert_close(y, net(x))
    assert r.stats.num_padded_rows == 1


def test_one_output_buffer_set_shared_by_all_rungs(registry):
    net = make_mlp()
    r = runner_for(net, (torch.randn(8, 8),), registry, sizes=[1, 2, 4, 8])
    ptrs = {r(torch.randn(n, 8)).data_ptr() for n in (1, 2, 4, 8)}
    assert len(ptrs) == 1


def test_capture_false_runs_eager_until_capture(registry):
    net = make_mlp()
    r = runner_for(net, (torch.randn(2, 8),), registry, sizes=[2], capture=False)
    assert len(r.status()) == 0 and "not captured yet" in str(r.status())
    x = torch.randn(2, 8)
    torch.testing.assert_close(r(x), net(x))
    assert r.stats.num_replayed == 0
    r.capture()
    r(x)
    assert r.stats.num_replayed == 1


def test_custom_verification_inputs_are_used(registry):
    table = torch.randn(10, 3)

    def lookup(ids):  # ids must be valid rows: the default random draw over [min, max] would be too
        return table[ids]

    seen = []

    def draw(n, gen):
        ids = torch.randint(0, 10, (n,), generator=gen)
        seen.append(n)
        return (ids,)

    r = runner_for(lookup, (torch.tensor([0, 9]),), registry, sizes=[1, 2], verify_inputs=draw)
    assert all(s.captured for s in r.status()) and sorted(seen) == [1, 2]
    ids = torch.tensor([4, 7])
    torch.testing.assert_close(r(ids), table[ids])

    def wrong(n, gen):
        return (torch.zeros(n, dtype=torch.long), torch.zeros(1))

    bad = runner_for(lookup, (torch.tensor([0, 9]),), registry, sizes=[2], verify_inputs=wrong, name="bad")
    assert "another structure" in bad.status()[0].detail


def test_status_indexes_like_a_tuple_and_prints_a_table(registry):
    backend = SimBackend(FaultPlan(capture={2: torch.OutOfMemoryError("CUDA out of memory")}))
    r = runner_for(make_mlp(), (torch.randn(4, 8),), registry, sizes=[1, 2, 4], backend=backend, name="t")
    status = r.status()
    assert len(status) == 3 and [s.size for s in status] == [1, 2, 4]
    assert status[0].captured and not status[1].captured and status[-1].size == 4
    assert [s.size for s in status[1:]] == [2, 4]
    lines = str(status).splitlines()
    assert lines[0] == "runner t (sim): 2 of 3 sizes captured"
    assert lines[1].split() == ["size", "graph", "padded", "calls", "MiB", "capture", "s", "note"]
    assert lines[3].split()[:3] == ["2", "eager", "-"] and "oom: CUDA out of memory" in lines[3]
    assert lines[4].split()[:3] == ["4", "captured", "yes"]
    assert "RungStatus(" not in str(status)
