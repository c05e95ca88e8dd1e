"""The fused sampling kernels (kernels/sampling.py) against sort_sample, the reference: the same token
for every row, on the GPU when present, else through Triton's CPU interpreter (tests/conftest.py sets
TRITON_INTERPRET=1).

top_p is placed mid-way between two cumulative masses (snap_top_p): there the float32 sums of the kernels
and of torch's cumsum cannot fall on different sides. Ties of value are not avoided: both rank them by id.
A small k_pad makes the slow path (the walk, the top-k mass) run on small vocabularies; paths() checks
that every path ran."""

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from sampling_reference import INF, allowed, paths, scaled, snap_top_p  # noqa: E402

from graphrun.llm.kernels import sampling as ops  # noqa: E402
from graphrun.llm.kernels import sampling_keys, sampling_passes  # noqa: E402
from graphrun.llm.noise import uniform_noise  # noqa: E402
from graphrun.llm.sampler import SamplingTensors, sort_sample  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def row_kinds(vocab: int, k_pad: int) -> list[tuple[str, float, float, int, float]]:
    """(name, logits scale, temperature, top_k, top_p; top_p < 0: snap near -top_p)."""
    mid_k = (k_pad + vocab) // 2
    return [
        ("greedy", 3.0, 0.0, 0, 1.0), ("greedy with params", 2.0, 0.0, 5, 0.5),
        ("temperature", 3.0, 0.8, 0, 1.0), ("tiny temperature", 3.0, 1e-7, 0, 1.0),
        ("top-k small", 3.0, 1.0, k_pad // 2, 1.0), ("top-k 1", 2.0, 1.5, 1, 1.0),
        ("top-k above k_pad", 1.0, 1.0, mid_k, 1.0), ("top-k >= vocab", 2.0, 1.0, vocab + 3, 1.0),
        ("top-p", 3.0, 1.0, 0, -0.5), ("top-p wide", 0.7, 1.2, 0, -0.8), ("top-p tiny", 2.0, 1.0, 0, 1e-4),
        ("top-p 1", 2.0, 0.9, 0, 1.0), ("both, small k", 2.0, 0.7, k_pad, -0.7),
        ("both, k above k_pad", 0.5, 1.0, mid_k, -0.6), ("flat top-p", 0.3, 1.0, 0, -0.9),
        ("flat, low top-p", 0.3, 1.0, 0, -0.3), ("flat, top-k 2 k_pad", 0.3, 1.0, 2 * k_pad, 1.0),
    ]  # fmt: skip


def build_rows(vocab: int, k_pad: int, seed: int, ties: bool = False):
    """Logits and SamplingTensors for every kind, plus masked variants as structured output makes them."""
    gen = torch.Generator().manual_seed(seed)
    kinds = row_kinds(vocab, k_pad)
    kinds += [(f"masked {name}", *rest) for name, *rest in kinds[4:]]
    n = len(kinds)
    logits = torch.randn(n, vocab, generator=gen)
    if ties:
        logits = (logits * 4).round() / 4  # values on a grid of 0.25: many exact ties
    temperature, top_k, top_p = torch.zeros(n), torch.zeros(n, dtype=torch.int32), torch.ones(n)
    for i, (name, scale, t, k, p) in enumerate(kinds):
        logits[i] *= scale
        if name.startswith("masked"):  # a grammar's mask: most tokens -inf, a few rows almost all
            keep = torch.rand(vocab, generator=gen) < (0.3 if i % 2 else 3 / vocab)
            logits[i] = logits[i].masked_fill(~keep, -INF)
        if p < 0:
            p = snap_top_p(scaled(logits[i], t), k, -p, min_gap=1e-4)
        temperature[i], top_k[i], top_p[i] = t, k, p
    seeds = torch.randint(0, 2**62, (n,), generator=gen)
    positions = torch.randint(0, 5000, (n,), generator=gen)
    return logits, SamplingTensors(temperature, top_k, top_p, seeds), positions


def fused(logits, params, positions, **sizes):
    on = [
        t.to(DEVICE)
        for t in (logits, params.temperature, params.top_k, params.top_p, params.seeds, positions)
    ]
    return ops.fused_sample(*on, **sizes).cpu()


@pytest.mark.parametrize(
    ("vocab", "block", "k_pad", "tile", "seed"),
    [
        (700, 128, 8, 128, 0),
        (700, 128, 8, 256, 1),
        (512, 64, 16, 128, 2),
        (37, 16, 8, 16, 3),
        (5, 16, 8, 16, 4),
    ],
)  # ragged last chunk; whole chunks; a vocabulary of 3 chunks; one smaller than k_pad
def test_fused_sample_gives_the_reference_tokens(vocab, block, k_pad, tile, seed):
    logits, params, positions = build_rows(vocab, k_pad, seed)
    want = sort_sample(logits, params, positions)
    got = fused(logits, params, positions, block=block, k_pad=k_pad, tile=tile)
    assert torch.equal(got, want), (got.tolist(), want.tolist())


def test_every_path_runs():
    """The rows of the 700-token case take every path: the list, walks of one and more checks, the
    top-k mass (the radix select) - so the equality above covers them all."""
    seen = set()
    for seed in (0, 1):
        logits, params, positions = build_rows(700, 8, seed)
        seen |= set(paths(logits, params, positions, k_pad=8))
    assert {"list", "walk1", "walk2+"} <= {name.removesuffix("+mass") for name in seen}
    assert any(name.endswith("+mass") for name in seen), seen


def test_tied_logits_give_the_reference_and_an_allowed_token():
    """Logits on a 0.25 grid: ties at the top-k and top-p boundaries. Tokens equal the reference's (both
    rank ties by id) and each lies in S, the allowed set computed here independently."""
    logits, params, positions = build_rows(300, 8, seed=5, ties=True)
    got = fused(logits, params, positions, block=64, k_pad=8, tile=128)
    assert torch.equal(got, sort_sample(logits, params, positions))
    for i, token in enumerate(got.tolist()):
        t, k, p = float(params.temperature[i]), int(params.top_k[i]), float(params.top_p[i])
        if t > 0:
            assert bool(allowed(scaled(logits[i], t), k, p)[token]), (i, token)


def test_seeds_and_positions_move_the_draw():
    """The same row under 24 (seed, position) pairs: the reference's tokens each time, and not one token."""
    row = torch.randn(1, 200) * 0.5
    n = 24
    logits = row.expand(n, -1).contiguous()
    params = SamplingTensors(torch.ones(n), torch.full((n,), 50, dtype=torch.int32), torch.ones(n) * 0.95,
                             torch.arange(n, dtype=torch.int64) * 7919)  # fmt: skip
    positions = torch.arange(n) % 5
    got = fused(logits, params, positions, block=64, k_pad=16, tile=64)
    assert torch.equal(got, sort_sample(logits, params, positions))
    assert len(set(got.tolist())) > 5


def test_a_row_of_only_minus_infinity_takes_id_zero_as_the_reference():
    logits = torch.full((3, 100), -INF)
    params = SamplingTensors(torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0, 0, 5], dtype=torch.int32),
                             torch.tensor([1.0, 1.0, 0.5]), torch.arange(3))  # fmt: skip
    positions = torch.zeros(3, dtype=torch.int64)
    got = fused(logits, params, positions, block=32, k_pad=8, tile=32)
    assert got.tolist() == sort_sample(logits, params, positions).tolist() == [0, 0, 0]


@triton.jit
def _gumbel_kernel(seeds_ptr, positions_ptr, out_ptr, vocab, BLOCK: tl.constexpr, PRECISE: tl.constexpr):
    row = tl.program_id(0)
    ids = tl.arange(0, BLOCK)
    base = sampling_keys.noise_base(tl.load(seeds_ptr + row), tl.load(positions_ptr + row))
    tl.store(out_ptr + row * vocab + ids, sampling_keys.gumbel(base, ids, PRECISE), mask=ids < vocab)


def test_gumbel_noise_is_the_references():
    """The kernels' noise against -log(-log(uniform_noise)): bit-identical on the GPU (libdevice's logf,
    as torch's CUDA log); through the interpreter NumPy's log, within float32 rounding of torch's."""
    seeds = torch.tensor([0, 1, 2**31 + 5, 2**62 + 12345], device=DEVICE)
    positions = torch.tensor([0, 7, 4096, 2**40], device=DEVICE)
    vocab = 1000
    out = torch.empty(4, vocab, device=DEVICE)
    precise = not sampling_keys.interpreting()
    _gumbel_kernel[(4,)](seeds, positions, out, vocab, BLOCK=1024, PRECISE=precise)
    ids = torch.arange(vocab, device=DEVICE).expand(4, -1)
    want = -torch.log(-torch.log(uniform_noise(seeds, positions, ids)))
    tolerance = 0.0 if precise else 1e-6
    torch.testing.assert_close(out, want, rtol=tolerance, atol=tolerance)


def test_fused_sample_rejects_what_it_cannot_do():
    logits, params, positions = build_rows(64, 8, seed=6)
    args = (params.temperature, params.top_k, params.top_p, params.seeds, positions)
    with pytest.raises(ValueError, match="power of two"):
        ops.fused_sample(logits, *args, block=96)
    with pytest.raises(ValueError, match="hold k_pad"):
        ops.fused_sample(logits, *args, block=16, k_pad=32)
    with pytest.raises(ValueError, match="one value per row"):
        ops.fused_sample(logits, params.temperature[:2], *args[1:])
    with pytest.raises(ValueError, match="contiguous columns"):
        ops.fused_sample(logits.t(), *args)


@triton.jit
def _top_k_mass_kernel(logits_ptr, k_ptr, out_ptr, vocab, temperature, shift, TILE: tl.constexpr):
    row = tl.program_id(0)
    k = tl.load(k_ptr + row)
    tl.store(
        out_ptr + row,
        sampling_passes.top_k_mass(logits_ptr + row * vocab, vocab, temperature, shift, k, TILE),
    )


def test_top_k_mass_sums_the_k_largest_ties_included():
    """The radix select's normaliser: the sum of exp(v - shift) over the k largest, where the k-th value
    is tied with values ranked after it (a 0.5 grid), on a row with -inf entries and a ragged last tile."""
    vocab, temperature, shift = 300, 0.5, 3.0
    gen = torch.Generator().manual_seed(7)
    row = (torch.randn(vocab, generator=gen) * 2).round() / 2
    row[::7] = -INF
    ks = torch.tensor([1, 9, 40, 41, 120, 250, 299], dtype=torch.int32)
    logits = row.expand(len(ks), -1).contiguous()
    out = torch.empty(len(ks), device=DEVICE)
    _top_k_mass_kernel[(len(ks),)](logits.to(DEVICE), ks.to(DEVICE), out, vocab, temperature, shift, TILE=128)
    v = (row / temperature).double().sort(descending=True).values
    want = torch.stack([(v[:k] - shift).exp().sum() for k in ks.tolist()]).float()
    assert int((v[:-1] == v[1:]).sum()) > 100  # ties everywhere, the k-th value's included
    torch.testing.assert_close(out.cpu(), want, rtol=1e-5, atol=0)


def test_strided_parameters_as_the_decode_graph_passes_them():
    """The decode graph hands columns of its packed step tensors (DecodeInputs: temperature and top_p of a
    (rows, 3) float tensor, seeds and positions of a (rows, width) int one): read by stride, same tokens."""
    from graphrun.llm.step_inputs import DecodeInputs

    logits, params, positions = build_rows(300, 8, seed=9)
    step = DecodeInputs.empty(logits.shape[0], max_blocks_per_seq=3)
    step.temperature.copy_(params.temperature)
    step.top_p.copy_(params.top_p)
    step.top_k.copy_(params.top_k)
    step.seeds.copy_(params.seeds)
    step.positions.copy_(positions)
    assert step.temperature.stride(0) == 3 and step.seeds.stride(0) > 1
    top_k = step.top_k.to(torch.int32)  # as decode_graph.py converts it
    got = ops.fused_sample(logits, step.temperature, top_k, step.top_p, step.seeds, step.positions, block=64,
                           k_pad=8, tile=128)  # fmt: skip
    assert torch.equal(got, sort_sample(logits, params, positions))


def test_sample_runs_the_fused_kernels_where_triton_serves_the_device(monkeypatch):
    """sample() is the engine's one entry: where Triton serves the logits' device it launches fused_sample
    (here through the interpreter) at sampling_block's size, and gives sort_sample's tokens."""
    from graphrun.llm import sampler

    logits, params, positions = build_rows(600, 64, seed=5)
    calls = []
    real = ops.fused_sample
    monkeypatch.setattr(sampler, "triton_enabled", lambda t: True)
    monkeypatch.setattr(ops, "fused_sample", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    got = sampler.sample(logits, params, positions)
    assert len(logits) > 16 and calls == [{"block": 2048}]  # kernels.sampling_block above 16 rows
    assert torch.equal(got, sort_sample(logits, params, positions))


def test_the_engine_samples_through_the_fused_kernels_with_its_request_parameters(monkeypatch):
    """The engine sampling through fused_sample, as on CUDA, with the parameters it builds from requests:
    the tokens of sort_sample. Eager decode: the CPU simulator of CUDA graphs replays recorded aten ops,
    and the Triton interpreter's kernels are not aten ops (the graphs' use of the kernels is GPU-tested:
    tests/llm/test_sampling_kernel_gpu.py captures them)."""
    from engine_runs import run_all

    from graphrun.llm import sampler
    from graphrun.llm.engine import LLMEngine
    from graphrun.llm.engine_config import EngineConfig
    from graphrun.llm.sampling_params import SamplingParams

    def engine() -> LLMEngine:
        return LLMEngine(EngineConfig(model="tiny", max_num_seqs=4, max_model_len=64, enforce_eager=True))

    params = [
        SamplingParams(temperature=0.9, top_p=p, top_k=k, seed=s, max_tokens=6, ignore_eos=True)
        for s, k, p in ((1, 40, 0.9), (2, 0, 0.5), (3, 5, 1.0))
    ]
    prompts = ["a", "b", "c"]
    want = run_all(engine(), prompts, params)
    calls = []
    real = ops.fused_sample
    monkeypatch.setattr(sampler, "triton_enabled", lambda t: True)
    monkeypatch.setattr(ops, "fused_sample", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    assert run_all(engine(), prompts, params) == want
    assert len(calls) >= 6  # a launch per step
