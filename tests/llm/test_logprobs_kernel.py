"""The fused logprobs kernels against compute_logprobs: on the GPU when present, else through Triton's CPU
interpreter (tests/conftest.py sets TRITON_INTERPRET=1). Values within float rounding; ids identical to a
stable sort (ties by lower id), and to torch.topk's wherever the value is not tied."""

import pytest
import torch

triton = pytest.importorskip("triton")

from graphrun.llm.kernels import logprobs as ops  # noqa: E402
from graphrun.llm.logprobs import compute_logprobs  # noqa: E402
from graphrun.llm.sampling_params import MAX_LOGPROBS  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def check(logits: torch.Tensor, tokens: torch.Tensor, k: int, block: int) -> None:
    """The fused kernels' (values, ids) == compute_logprobs's: values to 1e-5, ids by a stable sort."""
    got_values, got_ids = ops.fused_compute_logprobs(logits, tokens, k, block=block)
    want_values, want_ids = compute_logprobs(logits, tokens, k)
    torch.testing.assert_close(got_values, want_values, rtol=1e-5, atol=1e-6)
    logp = torch.log_softmax(logits.float(), dim=-1)
    stable_ids = logp.sort(dim=-1, descending=True, stable=True).indices[:, :k]  # ties: lower id first
    assert torch.equal(got_ids, stable_ids)
    untied = (logp[:, :, None] == want_values[:, None, 1:]).sum(dim=1) == 1  # (n, k): value unique in row
    assert untied.any() and torch.equal(got_ids[untied], want_ids[untied])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("vocab", "block"), [(512, 128), (1000, 256)])  # chunks whole, the last ragged
def test_fused_logprobs_match_compute_logprobs(dtype, vocab, block):
    torch.manual_seed(vocab)
    logits = (torch.randn(3, vocab, device=DEVICE) * 4).to(dtype)  # bf16: many exact ties
    tokens = torch.tensor([0, vocab - 1, vocab // 2 + 3], device=DEVICE)  # first id, last id, middle
    check(logits, tokens, MAX_LOGPROBS, block)


def test_fused_logprobs_with_masked_tokens():
    """-inf logits (a grammar's mask): a row with fewer finite entries than k, and a chunk all -inf."""
    torch.manual_seed(1)
    logits = torch.randn(2, 512, device=DEVICE) * 3
    logits[0, 128:256] = float("-inf")  # a whole chunk masked
    logits[0, ::3] = float("-inf")
    logits[1, :] = float("-inf")
    logits[1, [5, 300, 511, 64, 200]] = torch.tensor([2.0, 1.0, 3.0, 1.0, -7.0], device=DEVICE)  # a tie
    tokens = torch.tensor([1, 511], device=DEVICE)
    check(logits, tokens, MAX_LOGPROBS, block=128)
    values, ids = ops.fused_compute_logprobs(logits, tokens, MAX_LOGPROBS, block=128)
    assert ids[1, :5].tolist() == [511, 5, 64, 300, 200] and torch.isinf(values[1, 6:]).all()


def test_fused_logprobs_vocab_smaller_than_k():
    """A vocabulary under MAX_LOGPROBS: k = vocab, one chunk mostly padding."""
    logits = torch.randn(2, 12, device=DEVICE)
    check(logits, torch.tensor([11, 0], device=DEVICE), 12, block=32)


def test_fused_logprobs_scatter_rows_through_an_index():
    """With index, row i lands in row index[i]; the other rows keep what they held (write_rows's use)."""
    torch.manual_seed(2)
    logits, tokens = torch.randn(2, 300, device=DEVICE), torch.tensor([7, 299], device=DEVICE)
    values = torch.full((4, 1 + MAX_LOGPROBS), 9.0, device=DEVICE)
    ids = torch.full((4, MAX_LOGPROBS), -1, dtype=torch.int64, device=DEVICE)
    ops.fused_logprobs(logits, tokens, values, ids, index=torch.tensor([3, 1], device=DEVICE), block=128)
    want_values, want_ids = compute_logprobs(logits, tokens, MAX_LOGPROBS)
    torch.testing.assert_close(values[[3, 1]], want_values, rtol=1e-5, atol=1e-6)
    assert torch.equal(ids[[3, 1]], want_ids)
    assert (values[[0, 2]] == 9.0).all() and (ids[[0, 2]] == -1).all()


def test_fused_logprobs_reject_what_they_cannot_do():
    logits, tokens = torch.randn(2, 64, device=DEVICE), torch.zeros(2, dtype=torch.int64, device=DEVICE)
    values, ids = torch.empty(2, 21, device=DEVICE), torch.empty(2, 20, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="power of two"):
        ops.fused_logprobs(logits, tokens, values, ids, block=48)
    with pytest.raises(ValueError, match="1 \\+ k columns"):
        ops.fused_logprobs(logits, tokens, values[:, :20], ids)
    with pytest.raises(ValueError, match="k=33"):
        ops.fused_compute_logprobs(logits, tokens, 33)
    with pytest.raises(ValueError, match="float32"):
        ops.fused_logprobs(logits, tokens, values.double(), ids)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_logprobs_in_a_cuda_graph_at_full_vocab(dtype):
    """Qwen3's vocabulary, captured once, replayed on new logits: equal to compute_logprobs each time."""
    n, vocab = 4, 151936
    logits = torch.randn(n, vocab, device="cuda").to(dtype)
    tokens = torch.tensor([0, vocab - 1, 5, 70000], device="cuda")
    values = torch.empty(n, 1 + MAX_LOGPROBS, device="cuda")
    ids = torch.empty(n, MAX_LOGPROBS, dtype=torch.int64, device="cuda")
    ops.fused_logprobs(logits, tokens, values, ids)  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.fused_logprobs(logits, tokens, values, ids)
    for scale in (1.0, 5.0):
        logits.copy_(torch.randn(n, vocab, device="cuda") * scale)
        graph.replay()
        want_values, want_ids = compute_logprobs(logits, tokens, MAX_LOGPROBS)
        torch.testing.assert_close(values, want_values, rtol=1e-5, atol=1e-5)
        tied = logits.gather(1, ids) == logits.gather(1, want_ids)
        assert bool(((ids == want_ids) | tied).all())


def test_logprob_buffers_fused_path_writes_what_the_torch_path_writes(monkeypatch):
    """LogprobBuffers' two writers through the fused kernels (forced here: on the CPU the engine takes the
    torch path) leave the same rows as through compute_logprobs; the block follows the row count."""
    from graphrun.llm import logprobs as buffers_module

    torch.manual_seed(3)
    vocab, rows = 1000, 6
    logits, tokens = torch.randn(3, vocab, device=DEVICE) * 3, torch.tensor([5, 999, 0], device=DEVICE)
    index = torch.tensor([4, 0, 2], device=DEVICE)
    blocks = []
    monkeypatch.setattr(buffers_module, "logprobs_block", lambda n: blocks.append(n) or 256)
    written = {}
    for fused in (False, True):
        monkeypatch.setattr(buffers_module, "_fused", lambda logits, fused=fused: fused)
        prefix = buffers_module.LogprobBuffers(rows, vocab, torch.device(DEVICE))
        prefix.write_prefix(logits, tokens)
        scattered = buffers_module.LogprobBuffers(rows, vocab, torch.device(DEVICE))
        scattered.write_rows(index, logits, tokens)
        written[fused] = (prefix, scattered)
    assert blocks == [3, 3]  # each fused write asked for its block by its row count
    for want, got in zip(written[False], written[True], strict=True):
        torch.testing.assert_close(got.values, want.values, rtol=1e-5, atol=1e-6)
        assert torch.equal(got.top_ids, want.top_ids)  # random float32 logits: no ties
    assert written[True][1].values[[1, 3, 5]].abs().sum() == 0  # rows not in index untouched
