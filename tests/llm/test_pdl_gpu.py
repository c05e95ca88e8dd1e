"""Programmatic dependent launch changes no bit: a decode layer's chain of our kernels (with torch and
cuBLAS ops between them), captured in a CUDA graph with PDL on, gives exactly what the same chain
captured with PDL off gives, replay after replay on fresh inputs; and so does the chain run eagerly with
PDL on. Needs a GPU that takes PDL (Hopper or later); qwen3-0.6b's shapes."""

from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("triton")

from graphrun.llm.kernels import gemv, logprobs, pdl, triton_ops

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, VOCAB = 1024, 16, 8, 128, 3072, 151936
BLOCK_SIZE, NUM_BLOCKS, CONTEXT, EPS, TOP_K = 16, 256, 512, 1e-6, 5
MAX_BLOCKS = CONTEXT // BLOCK_SIZE + 8

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or not pdl.pdl_supported(torch.device("cuda")),
        reason="needs a GPU with programmatic dependent launch (compute capability >= 9)",
    ),
]


def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, device="cuda") * scale).to(torch.bfloat16)


@dataclass(frozen=True)
class Weights:
    """One layer's weights and the LM head, shared by every variant (nothing writes them)."""

    norm_in: torch.Tensor
    qkv: torch.Tensor
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    o: torch.Tensor
    norm_post: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    extra: torch.Tensor  # a cuBLAS product between our kernels
    norm_final: torch.Tensor
    lm_head: torch.Tensor


def make_weights() -> Weights:
    def scale() -> torch.Tensor:
        return rand(HIDDEN, scale=0.1) + 1

    return Weights(
        norm_in=scale(),
        qkv=rand((HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN, scale=0.03),
        q_norm=rand(HEAD_DIM, scale=0.1) + 1,
        k_norm=rand(HEAD_DIM, scale=0.1) + 1,
        o=rand(HIDDEN, HEADS * HEAD_DIM, scale=0.03),
        norm_post=scale(),
        gate_up=rand(2 * INTER, HIDDEN, scale=0.03),
        down=rand(HIDDEN, INTER, scale=0.02),
        extra=rand(2 * HIDDEN, HIDDEN, scale=0.03),
        norm_final=scale(),
        lm_head=rand(VOCAB, HIDDEN, scale=0.03),
    )


class Chain:
    """Static inputs, a KV cache of its own, and the step: our kernels in a decode layer's order."""

    def __init__(self, batch: int, weights: Weights, cache: torch.Tensor) -> None:
        self.w = weights
        self.k_cache, self.v_cache = cache[0].clone(), cache[1].clone()
        self.hidden = torch.zeros(batch, HIDDEN, device="cuda", dtype=torch.bfloat16)
        self.residual = torch.zeros_like(self.hidden)
        self.positions = torch.zeros(batch, dtype=torch.int64, device="cuda")
        self.slots = torch.zeros_like(self.positions)
        self.lens = torch.zeros_like(self.positions)  # int64: cast in-graph, as the decode graph does
        self.tables = torch.zeros(batch, MAX_BLOCKS, dtype=torch.int64, device="cuda")
        inv = 1.0 / (10000 ** (torch.arange(0, HEAD_DIM, 2, device="cuda").float() / HEAD_DIM))
        freqs = torch.arange(CONTEXT + 64, device="cuda").float()[:, None] * inv[None]
        self.cos, self.sin = freqs.cos(), freqs.sin()

    def load(self, inputs: dict[str, torch.Tensor]) -> None:
        for name, value in inputs.items():
            getattr(self, name).copy_(value)

    def step(self) -> dict[str, torch.Tensor]:
        w, m = self.w, self.hidden.shape[0]
        norm = gemv.Norm(w.norm_in, EPS, self.residual)
        qkv, summed = gemv.norm_gemv(self.hidden, norm, w.qkv, block_n=4, block_k=512, num_warps=4)
        q = triton_ops.qk_norm_rope_write(qkv, self.positions, self.cos, self.sin, w.q_norm, w.k_norm, EPS,
                                          self.slots, self.k_cache, self.v_cache, HEADS)  # fmt: skip
        lens, tables = self.lens.to(torch.int32), self.tables.to(torch.int32)  # torch kernels, in-graph
        attn = triton_ops.paged_decode_attention(q, self.k_cache, self.v_cache, tables, lens, HEAD_DIM**-0.5)
        o = gemv.gemv(attn.view(m, -1), w.o, block_n=1, block_k=1024, num_warps=4)
        norm = gemv.Norm(w.norm_post, EPS, summed)
        act, summed = gemv.norm_gemv(o, norm, w.gate_up, silu_mul=True, block_n=2, block_k=512, num_warps=2)
        down = gemv.gemv(act, w.down, block_n=1, block_k=1024, num_warps=4)
        extra = triton_ops.silu_mul(down @ w.extra.T)  # cuBLAS, then ours
        normed, _ = triton_ops.add_rmsnorm(extra, summed, w.norm_final, EPS)
        logits = triton_ops.skinny_logits(normed, w.lm_head)
        tokens = logits.argmax(dim=-1)
        values, ids = logprobs.compute_through_kernels(logits, tokens, TOP_K)
        return {"qkv": qkv, "attn": attn, "act": act, "normed": normed, "logits": logits, "values": values,
                "ids": ids, "k_cache": self.k_cache, "v_cache": self.v_cache}  # fmt: skip


def fresh_inputs(batch: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A step's inputs: each sequence at a random context <= CONTEXT, its blocks anywhere but block 0."""
    lens = torch.randint(CONTEXT // 2, CONTEXT + 1, (batch,), generator=gen)
    tables = torch.randint(1, NUM_BLOCKS, (batch, MAX_BLOCKS), generator=gen)
    for row in range(batch):  # distinct blocks per row: no two rows write one slot
        tables[row] = torch.randperm(NUM_BLOCKS - 1, generator=gen)[:MAX_BLOCKS] + 1
    positions = lens - 1
    slots = tables.gather(1, (positions // BLOCK_SIZE)[:, None])[:, 0] * BLOCK_SIZE + positions % BLOCK_SIZE
    hidden = torch.randn(batch, HIDDEN, generator=gen).to(torch.bfloat16)
    residual = torch.randn(batch, HIDDEN, generator=gen).to(torch.bfloat16)
    inputs = dict(
        hidden=hidden, residual=residual, positions=positions, slots=slots, lens=lens, tables=tables
    )
    return {name: value.cuda() for name, value in inputs.items()}


def captured(chain: Chain) -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]:
    chain.step()  # compiles and warms the allocator outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = chain.step()
    return graph, outputs


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    )


@pytest.mark.parametrize("batch", [1, 4])
def test_pdl_on_equals_pdl_off_bit_for_bit(batch, monkeypatch):
    torch.manual_seed(batch)
    weights, cache = make_weights(), rand(2, NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    gen = torch.Generator().manual_seed(batch)
    on, off, eager = (Chain(batch, weights, cache) for _ in range(3))
    first = fresh_inputs(batch, gen)
    for chain in (on, off, eager):  # the warm-up steps write the same cache slots with the same values
        chain.load(first)
    graph_on, out_on = captured(on)  # as shipped: on where supported
    monkeypatch.setattr(pdl, "pdl_supported", lambda device: False)
    graph_off, out_off = captured(off)
    monkeypatch.undo()
    eager.step()
    for _ in range(4):
        inputs = fresh_inputs(batch, gen)
        for chain in (on, off, eager):
            chain.load(inputs)
        graph_on.replay()
        graph_off.replay()
        out_eager = eager.step()  # PDL on, launched on the stream
        torch.cuda.synchronize()
        for name, want in out_off.items():
            assert bitwise_equal(out_on[name], want), f"{name}: PDL on in a graph differs from off"
            assert bitwise_equal(out_eager[name], want), f"{name}: PDL on, eager, differs from off in a graph"
