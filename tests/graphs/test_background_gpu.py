"""Background capture on a real GPU: threads call a runner eagerly on the default stream while a thread
captures rungs on its own stream (thread-local capture mode); outputs stay eager's throughout (needs CUDA)."""

import threading

import pytest
import torch
from prometheus_client import CollectorRegistry

from graphrun import CallFallback, GraphRunner

pytestmark = pytest.mark.gpu


def mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 32)
    )
    return net.to("cuda").eval().requires_grad_(False)


def test_rungs_switch_under_concurrent_calls_and_outputs_equal_eager():
    net = mlp()
    run = GraphRunner(
        net,
        (torch.randn(64, 64, device="cuda"),),
        max_batch_size=64,
        capture="background",
        clone_outputs=True,
        registry=CollectorRegistry(),
    )
    problems: list[str] = []
    calls = [0]

    def caller(seed: int) -> None:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        try:
            while not run.wait_captured(0) or calls[0] < 400:
                n = int(torch.randint(1, 65, (1,)))
                x = torch.randn(n, 64, device="cuda", generator=gen)
                with torch.no_grad():
                    want = net(x)
                got = run(x)
                if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                    problems.append(f"batch {n}: max diff {(got - want).abs().max().item()}")
                calls[0] += 1
        except Exception as exc:
            problems.append(repr(exc))

    threads = [threading.Thread(target=caller, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    assert run.wait_captured(120)
    for t in threads:
        t.join(120)
    assert problems == []
    assert all(s.captured for s in run.status())
    assert run.stats.num_replayed > 0
    # replays after the pass equal eager too (the graphs recorded no other thread's work)
    x = torch.randn(7, 64, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(run(x), net(x), rtol=1e-4, atol=1e-4)
    assert set(run.stats.eager_fallback) <= {CallFallback.CAPTURING}
