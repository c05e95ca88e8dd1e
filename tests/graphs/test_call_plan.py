"""The call path's plans: made per batch size on first use, dropped when rungs change, and never weaker
than full validation: a call a plan does not accept takes the slow path, which names what is wrong."""

import pytest
import torch
from torch import nn

from graphrun import GraphRunner
from graphrun.errors import GraphInputError, StaticValueError
from graphrun.graphs.options import RunnerOptions
from graphrun.graphs.status import CallFallback

SIZES = [1, 2, 4, 8]


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval().requires_grad_(False)


def sim_runner(fn, example, registry, example_kwargs=None, **kw):
    return GraphRunner(fn, example, example_kwargs, sizes=SIZES, backend="sim", registry=registry, **kw)


def test_every_size_replays_equal_to_eager_on_its_first_and_later_calls(registry):
    net = make_mlp()
    run = sim_runner(net, (torch.randn(8, 8),), registry)
    for _ in range(3):  # the first call of each size makes its plan, the later ones use it
        for n in range(1, 9):
            x = torch.randn(n, 8)
            torch.testing.assert_close(run(x), net(x))
    assert run.stats.num_replayed == 24 and not run.stats.eager_fallback
    assert run.stats.num_padded_rows == 3 * (1 + 3 + 2 + 1)  # 3 -> 4; 5, 6, 7 -> 8


def test_a_plan_still_refuses_what_validation_refuses(registry):
    run = sim_runner(make_mlp(), (torch.randn(8, 8),), registry)
    run(torch.randn(2, 8))  # the plan for batch 2 exists now
    with pytest.raises(GraphInputError, match="dtype"):
        run(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(GraphInputError, match="non-batched dimensions"):
        run(torch.randn(2, 9))
    with pytest.raises(GraphInputError, match="on cpu"):
        run(torch.randn(2, 8, device="meta"))
    with pytest.raises(GraphInputError, match="expected a Tensor"):
        run([[0.0] * 8] * 2)
    with pytest.raises(GraphInputError, match="structure"):
        run(torch.randn(2, 8), torch.randn(2, 8))
    with pytest.raises(GraphInputError, match="batch size is 0"):
        run(torch.randn(0, 8))
    assert run.stats.num_replayed == 1 and not run.stats.eager_fallback


def test_other_leaves_are_checked_too(registry):
    def fn(x, bias, *, scale):
        return x * scale + bias

    example = (torch.randn(4, 8), torch.randn(8))
    run = sim_runner(
        fn, example, registry, {"scale": 2.0}, batch_dims=(0, None), kwarg_batch_dims={"scale": None}
    )
    x, bias = torch.randn(3, 8), torch.randn(8)
    torch.testing.assert_close(run(x, bias, scale=2.0), x * 2.0 + bias)
    with pytest.raises(GraphInputError, match=r"args\[1\]"):
        run(x, torch.randn(9), scale=2.0)
    with pytest.raises(StaticValueError, match=r"captured with 2\.0"):
        run(x, bias, scale=3.0)
    bias2 = torch.randn(8)
    torch.testing.assert_close(run(x, bias2, scale=2.0), x * 2.0 + bias2)  # the shared leaf is copied


def test_scalars_as_tensors_are_filled_and_type_checked(registry):
    run = sim_runner(
        lambda x, k: x * k, (torch.randn(4, 8), 2.0), registry, batch_dims=(0, None), scalars="tensor"
    )
    x = torch.randn(2, 8)
    torch.testing.assert_close(run(x, 3.0), x * 3.0)
    torch.testing.assert_close(run(x, 5.0), x * 5.0)
    with pytest.raises(GraphInputError, match="expected a float"):
        run(x, 5)


@pytest.mark.parametrize(("pad", "want_row"), [("repeat", "last"), (7.0, 7.0)])
def test_padding_writes_the_rows_between_the_batch_and_its_rung(registry, pad, want_row):
    run = sim_runner(lambda x: x * 1.0, (torch.randn(8, 8),), registry, pad=pad)
    x = torch.randn(3, 8)
    torch.testing.assert_close(run(x), x)
    buffer = run.slots[0].views[4]  # rows of rung 4: 3 from the call, 1 padded
    torch.testing.assert_close(buffer[:3], x)
    want = x[2] if want_row == "last" else torch.full((8,), 7.0)
    torch.testing.assert_close(buffer[3], want)


def test_plans_are_dropped_when_a_smaller_rung_lands(registry):
    net = make_mlp()
    run = sim_runner(net, (torch.randn(8, 8),), registry, capture=False)
    run.start_background_capture(thread=False)  # driven by hand: deterministic
    run.capture_step()  # rung 8 only
    x = torch.randn(3, 8)
    torch.testing.assert_close(run(x), net(x))
    assert (run.stats.num_replayed, run.stats.num_padded_rows) == (1, 5)  # 3 rows on rung 8
    run.capture_step()  # rung 4 lands: the plan for batch 3 must move to it
    torch.testing.assert_close(run(x), net(x))
    assert (run.stats.num_replayed, run.stats.num_padded_rows) == (2, 6)  # 3 rows on rung 4


def test_tuple_outputs_are_built_once_dict_outputs_per_call(registry):
    tup = sim_runner(lambda x: (x + 1, x * 2), (torch.randn(8, 8),), registry, name="tup")
    x = torch.randn(3, 8)
    first = tup(x)
    assert tup(x) is first  # aliases the static outputs, like every replayed output
    dct = sim_runner(lambda x: {"a": x + 1}, (torch.randn(8, 8),), registry, name="dct")
    out = dct(x)
    out["b"] = out.pop("a")  # the caller's to change: the next call is not affected
    torch.testing.assert_close(dct(x)["a"], x + 1)
    cloned = sim_runner(lambda x: (x + 1,), (torch.randn(8, 8),), registry, name="cl", clone_outputs=True)
    a = cloned(x)[0]
    b = cloned(torch.zeros(3, 8))[0]
    torch.testing.assert_close(a, x + 1)  # a clone: the second call did not overwrite it
    torch.testing.assert_close(b, torch.ones(3, 8))


def test_zero_copy_calls_skip_the_copy_and_replay(registry):
    net = make_mlp()
    run = sim_runner(net, (torch.randn(8, 8),), registry)
    args, kwargs = run.static_inputs(3)
    args[0].copy_(torch.randn(3, 8))
    want = net(args[0].clone())
    torch.testing.assert_close(run(*args, **kwargs), want)
    assert run.stats.num_replayed == 1


def test_an_input_that_requires_grad_is_copied_without_history(registry):
    run = sim_runner(lambda x: x * 2, (torch.randn(8, 8),), registry)
    x = torch.randn(2, 8, requires_grad=True)
    out = run(x)
    assert not out.requires_grad and not run.slots[0].buffer.requires_grad
    torch.testing.assert_close(out, x.detach() * 2)


def test_a_call_above_the_top_rung_runs_eager_counted(registry):
    net = make_mlp()
    run = GraphRunner(
        net, (torch.randn(8, 8),), options=RunnerOptions(sizes=SIZES, backend="sim", registry=registry)
    )
    x = torch.randn(9, 8)
    torch.testing.assert_close(run(x), net(x))
    assert run.stats.eager_fallback == {CallFallback.ABOVE_TOP_RUNG: 1}
