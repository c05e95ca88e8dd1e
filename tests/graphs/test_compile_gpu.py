"""compile=True on the device: AOTInductor is refused on CUDA for now (its package loader crashed the
process on the first GPU run: graphs/compile.py), so torch.compile's kernels are captured; a second runner
compiles again from the cache folder, and replays read the live weights."""

import pytest
import torch
from prometheus_client import CollectorRegistry

from graphrun import GraphRunner
from graphrun.graphs.status import CompileBackend, CompileOutcome

pytestmark = pytest.mark.gpu


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(256, 1024), torch.nn.Linear(1024, 256)
        self.gate = torch.nn.Linear(256, 4)  # a small bias: inductor would inline it by default

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x + self.down(torch.nn.functional.gelu(self.up(torch.nn.functional.layer_norm(x, (256,)))))
        return h, self.gate(h)


def build(net: Block, cache: str, name: str) -> GraphRunner:
    example = (torch.randn(8, 256, device="cuda"),)
    return GraphRunner(
        net, example, sizes=[1, 2, 4, 8], compile=True, compile_cache_dir=cache, name=name,
        registry=CollectorRegistry(),
    )  # fmt: skip


def assert_equal_to_eager(r: GraphRunner, net: Block) -> None:
    for n in (1, 3, 8):
        x = torch.randn(n, 256, device="cuda")
        with torch.no_grad():
            want = net(x)
        for got, expected in zip(r(x), want, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_cuda_compiles_with_torch_compile_saying_why_and_replays_read_live_weights(tmp_path):
    torch.manual_seed(0)
    net = Block().cuda().eval()
    first = build(net, str(tmp_path), "first")
    report = first.status().compile
    assert report.outcome is CompileOutcome.COMPILED, report
    assert report.backend is CompileBackend.TORCH_COMPILE
    assert "not used on CUDA" in report.aot_refused
    assert all(s.captured for s in first.status())
    assert_equal_to_eager(first, net)

    second = build(net, str(tmp_path), "second")
    again = second.status().compile
    assert again.outcome is CompileOutcome.COMPILED and "not used on CUDA" in again.aot_refused, again
    assert all(s.captured for s in second.status())
    # weights changed in place after capture: the replays read the live parameters, not a copy
    with torch.no_grad():
        net.gate.bias.add_(1.0)
        net.up.weight.mul_(0.5)
    assert_equal_to_eager(second, net)
    assert_equal_to_eager(first, net)
