"""Outputs carry no autograd history by default (inference_mode=True), replayed or eager; False keeps it."""

import torch

from graphrun import CallFallback, GraphRunner


def trainable_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))


def no_history(t):
    return not t.requires_grad and t.grad_fn is None


def test_outputs_carry_no_history_replayed_or_eager(registry):
    net = trainable_mlp()
    assert all(p.requires_grad for p in net.parameters())
    r = GraphRunner(net, (torch.randn(4, 8),), sizes=[2, 4], backend="sim", registry=registry)
    assert all(s.captured for s in r.status())
    replayed = [r(torch.randn(n, 8)) for n in (2, 3, 4)]
    eager = r(torch.randn(6, 8))  # above the top rung
    assert r.stats.num_replayed == 3 and r.stats.eager_fallback == {CallFallback.ABOVE_TOP_RUNG: 1}
    for y in (*replayed, eager):
        assert no_history(y)
        assert not y.is_inference()  # an ordinary tensor: it may feed a model being trained
    x = torch.randn(3, 8)
    torch.testing.assert_close(r(x), net(x).detach())


def test_an_input_that_requires_grad_leaves_no_history_behind(registry):
    net = trainable_mlp()
    r = GraphRunner(net, (torch.randn(4, 8),), sizes=[4], backend="sim", registry=registry)
    x = torch.randn(4, 8, requires_grad=True)
    y = r(x)
    assert no_history(y)
    assert no_history(r.slots[0].buffer)  # the static input holds the values, not the caller's graph


def test_outputs_can_feed_a_model_being_trained(registry):
    r = GraphRunner(trainable_mlp(), (torch.randn(4, 8),), sizes=[4], backend="sim", registry=registry)
    head = torch.nn.Linear(4, 1)
    for n in (3, 9):  # a replay and an eager fallback
        head(r(torch.randn(n, 8))).sum().backward()
    assert head.weight.grad is not None


def test_inference_mode_false_keeps_todays_autograd_behaviour(registry):
    net = trainable_mlp()
    r = GraphRunner(
        net, (torch.randn(4, 8),), sizes=[4], backend="sim", registry=registry, inference_mode=False
    )
    assert r(torch.randn(4, 8)).requires_grad  # the static outputs were written with autograd on
    eager = r(torch.randn(6, 8))
    assert eager.requires_grad and eager.grad_fn is not None
