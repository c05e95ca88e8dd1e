"""In-graph sampling: greedy, top-k, top-p, seeds, and no host syncs (checked through the simulator)."""

import math

import pytest
import torch

from graphrun.graphs.backends.sim import SimBackend
from graphrun.llm.noise import uniform_noise
from graphrun.llm.sampler import SamplingTensors, greedy_sample, sample


def params(n, temperature=1.0, top_k=0, top_p=1.0, seed=0):
    return SamplingTensors(
        temperature=torch.full((n,), float(temperature)),
        top_k=torch.full((n,), top_k, dtype=torch.int32),
        top_p=torch.full((n,), float(top_p)),
        seeds=torch.arange(n, dtype=torch.int64) + seed,
    )


def test_temperature_zero_is_greedy():
    logits = torch.randn(5, 50)
    out = sample(logits, params(5, temperature=0.0), torch.arange(5))
    assert torch.equal(out, greedy_sample(logits))


def test_top_k_one_is_greedy_at_any_temperature():
    logits = torch.randn(4, 50)
    out = sample(logits, params(4, temperature=2.0, top_k=1), torch.arange(4))
    assert torch.equal(out, logits.argmax(-1))


def test_top_k_keeps_only_the_k_most_likely():
    logits = torch.randn(1, 100)
    allowed = set(logits[0].topk(5).indices.tolist())
    seen = {int(sample(logits, params(1, top_k=5, seed=s), torch.tensor([s]))[0]) for s in range(300)}
    assert seen <= allowed and len(seen) == 5


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {int(sample(logits, params(1, top_p=0.7, seed=s), torch.tensor([s]))[0]) for s in range(300)}
    assert seen == {0, 1}  # 0.5 + 0.3 covers 0.7; 0.15 and 0.05 are cut
    tiny = {int(sample(logits, params(1, top_p=0.01, seed=s), torch.tensor([s]))[0]) for s in range(50)}
    assert tiny == {0}  # the most likely token always stays


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = probs.log().expand(4000, 3).contiguous()
    p = SamplingTensors(
        torch.ones(4000),
        torch.zeros(4000, dtype=torch.int32),
        torch.ones(4000),
        torch.arange(4000, dtype=torch.int64),
    )
    counts = (
        torch.bincount(sample(logits, p, torch.zeros(4000, dtype=torch.long)), minlength=3).float() / 4000
    )
    assert torch.allclose(counts, probs, atol=0.03), counts


def test_same_seed_same_tokens_whatever_the_batch():
    logits = torch.randn(3, 200)
    alone = sample(logits[1:2], params(1, seed=7), torch.tensor([11]))
    p = params(3, seed=0)
    p.seeds[1] = 7
    batched = sample(logits, p, torch.tensor([3, 11, 5]))
    assert batched[1] == alone[0]


def test_noise_is_uniform_in_the_open_interval():
    u = uniform_noise(torch.tensor([1, 2**40]), torch.tensor([0, 5]), torch.arange(20000).expand(2, -1))
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    assert not math.isclose(float(u[0, 0]), float(u[1, 0]))


def test_the_largest_hash_still_gives_noise_below_one_and_top_k_holds():
    """(seed 50, position 0, token 22380) hashes to the largest value: its u must stay below 1.0 in
    float32. It once rounded to 1.0, the noise was infinite, and -inf (masked by top-k) + inf = NaN won
    argmax: a token outside top-k, for about 1 row in 100 at Qwen3's vocabulary."""
    seed, position, vocab = 50, 0, 151936
    u = uniform_noise(torch.tensor([seed]), torch.tensor([position]), torch.arange(vocab)[None])
    assert int(u.argmax()) == 22380 and float(u.max()) == 1 - 2**-24
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(0))
    out = sample(logits, params(1, top_k=1, seed=seed), torch.tensor([position]))
    assert int(out) == int(logits.argmax())


@pytest.mark.parametrize("fn", ["sample", "greedy"])
def test_sampling_captures_without_host_sync(fn):
    logits = torch.randn(4, 64)
    p = params(4, temperature=0.8, top_k=10, top_p=0.9)
    positions = torch.arange(4)
    backend = SimBackend()
    backend.register_static([logits, positions, p.temperature, p.top_k, p.top_p, p.seeds])
    out = {}

    def body():
        out["t"] = sample(logits, p, positions) if fn == "sample" else greedy_sample(logits)

    graph = backend.capture(body)
    logits.copy_(torch.randn(4, 64))
    graph.replay()
    want = sample(logits, p, positions) if fn == "sample" else greedy_sample(logits)
    assert torch.equal(out["t"], want)


def test_ties_are_ordered_by_lower_id():
    """Equal logits rank by lower id (a stable sort): top-k 2 over three tied maxima keeps ids 1 and 2."""
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    seen = {int(sample(logits, params(1, top_k=2, seed=s), torch.tensor([s]))[0]) for s in range(200)}
    assert seen == {1, 2}
