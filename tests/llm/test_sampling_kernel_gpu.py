"""The fused sampling kernels on the GPU at Qwen3's vocabulary, in a CUDA graph, against sort_sample()."""

import pytest
import torch
from sampling_reference import INF, paths, scaled, snap_top_p

from graphrun.llm.sampler import SamplingTensors, sort_sample

pytest.importorskip("triton")
from graphrun.llm.kernels.sampling import K_PAD, fused_sample


def full_vocab_rows(vocab: int, gen: torch.Generator):
    """Rows at a real vocabulary: peaked ones (a few boosted tokens over a bulk, as LLM logits are) and
    shelved ones (a flat bulk under 200 tokens of equal boost: a nucleus wider than K_PAD, so the walk
    and the top-k mass run at full size), rounded to bfloat16 as the model's logits are."""
    kinds = [  # (shelf, temperature, top_k, top_p; top_p < 0: snap near -top_p)
        (False, 0.0, 0, 1.0), (False, 1.0, 0, 1.0), (True, 0.7, 0, 1.0), (False, 1.0, 20, 1.0),
        (False, 0.7, 20, -0.8), (False, 1.0, 50, 1.0), (False, 1.0, 64, -0.9), (False, 1.0, 65, -0.9),
        (False, 1.0, 0, -0.9), (True, 1.0, 0, -0.2), (True, 1.0, 0, -0.3), (True, 1.0, 150, 1.0),
        (True, 1.0, 1000, 1.0), (True, 1.0, 500, -0.25), (True, 0.6, 0, -0.95), (False, 1.0, 1, 1.0),
    ]  # fmt: skip
    n = len(kinds)
    logits = torch.randn(n, vocab, generator=gen) * 2
    params = SamplingTensors(torch.zeros(n), torch.zeros(n, dtype=torch.int32), torch.ones(n),
                             torch.randint(0, 2**62, (n,), generator=gen))  # fmt: skip
    for i, (shelf, t, k, p) in enumerate(kinds):
        boosted = torch.randperm(vocab, generator=gen)[: 200 if shelf else 30]
        if shelf:
            logits[i] = logits[i] / 4
            logits[i, boosted] += 6.0
        else:
            logits[i, boosted] += torch.rand(30, generator=gen) * 10 + 5
        if i % 3 == 0:  # a grammar's mask over part of the row
            logits[i, torch.randperm(vocab, generator=gen)[: vocab // 2]] = -INF
        logits[i] = logits[i].bfloat16().float()
        if p < 0:
            p = snap_top_p(scaled(logits[i], t), k, -p, min_gap=1e-4)
        params.temperature[i], params.top_k[i], params.top_p[i] = t, k, p
    return logits, params, torch.randint(0, 100000, (n,), generator=gen)


@pytest.mark.gpu
def test_sample_in_a_cuda_graph_at_full_vocab_gives_the_reference_tokens():
    """The fused kernels captured once at Qwen3's vocabulary, replayed on new logits and parameters:
    sort_sample()'s tokens every time, and every path of the kernels taken."""
    vocab, gen = 151936, torch.Generator().manual_seed(11)
    sets = [full_vocab_rows(vocab, gen) for _ in range(3)]
    logits, params, positions = sets[0][0].cuda(), sets[0][1], sets[0][2].cuda()
    static = SamplingTensors(*(getattr(params, f).cuda() for f in ("temperature", "top_k", "top_p", "seeds")))

    def fused() -> torch.Tensor:
        return fused_sample(logits, static.temperature, static.top_k, static.top_p, static.seeds, positions)

    fused()  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tokens = fused()
    seen = set()
    for set_logits, set_params, set_positions in sets:
        logits.copy_(set_logits)
        positions.copy_(set_positions)
        for field in ("temperature", "top_k", "top_p", "seeds"):
            getattr(static, field).copy_(getattr(set_params, field))
        graph.replay()
        want = sort_sample(logits, static, positions)
        assert torch.equal(tokens, want), (tokens.tolist(), want.tolist())
        seen |= set(paths(set_logits, set_params, set_positions, k_pad=K_PAD))
    assert {"list", "walk1", "walk2+"} <= {name.removesuffix("+mass") for name in seen}, seen
    assert any(name.endswith("+mass") for name in seen), seen
