"""pruned_logprobs (kernels/logprobs.py) against compute_logprobs: on the GPU when present, else through
Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1). Values within float rounding; ids
identical to a stable sort (ties by lower id), and to torch.topk's wherever the value is not tied. Cases
with more chunks than k make the kernels prune; with fewer, every chunk is a candidate set."""

import pytest
import torch

triton = pytest.importorskip("triton")

from graphrun.llm.kernels import logprobs as ops  # noqa: E402
from graphrun.llm.logprobs import compute_logprobs  # noqa: E402
from graphrun.llm.sampling_params import MAX_LOGPROBS  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def check(
    logits: torch.Tensor, tokens: torch.Tensor, k: int, block: int, untied: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' (values, ids), returned, == compute_logprobs's: values to 1e-5 (NaN where torch's are),
    ids by a stable sort; where `untied`, some top values are unique in their row and there the ids equal
    torch.topk's."""
    got_values, got_ids = ops.compute_through_kernels(logits, tokens, k, block=block)
    want_values, want_ids = compute_logprobs(logits, tokens, k)
    torch.testing.assert_close(got_values, want_values, rtol=1e-5, atol=1e-6, equal_nan=True)
    logp = torch.log_softmax(logits.float(), dim=-1)
    stable_ids = logp.sort(dim=-1, descending=True, stable=True).indices[:, :k]  # ties: lower id first
    assert torch.equal(got_ids, stable_ids)
    unique = (logp[:, :, None] == want_values[:, None, 1:]).sum(dim=1) == 1  # (n, k): value unique in row
    assert torch.equal(got_ids[unique], want_ids[unique]) and (unique.any() or not untied)
    return got_values, got_ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("vocab", "block"), [(512, 128), (1000, 256), (2000, 64)])  # last two: ragged
def test_logprobs_kernels_match_compute_logprobs(dtype, vocab, block):
    """(2000, 64): 32 chunks, more than k, so the pruned kernels prune; bf16: many exact ties."""
    torch.manual_seed(vocab)
    logits = (torch.randn(3, vocab, device=DEVICE) * 4).to(dtype)
    tokens = torch.tensor([0, vocab - 1, vocab // 2 + 3], device=DEVICE)  # first id, last id, middle
    check(logits, tokens, MAX_LOGPROBS, block)


def test_logprobs_kernels_with_masked_tokens():
    """-inf logits (a grammar's mask): a row with fewer finite entries than k, and a chunk all -inf."""
    torch.manual_seed(1)
    logits = torch.randn(2, 512, device=DEVICE) * 3
    logits[0, 128:256] = float("-inf")  # a whole chunk masked
    logits[0, ::3] = float("-inf")
    logits[1, :] = float("-inf")
    logits[1, [5, 300, 511, 64, 200]] = torch.tensor([2.0, 1.0, 3.0, 1.0, -7.0], device=DEVICE)  # a tie
    tokens = torch.tensor([1, 511], device=DEVICE)
    values, ids = check(logits, tokens, MAX_LOGPROBS, block=128)
    assert ids[1, :5].tolist() == [511, 5, 64, 300, 200] and torch.isinf(values[1, 6:]).all()


@pytest.mark.parametrize(("vocab", "block", "k"), [(12, 32, 12), (300, 128, MAX_LOGPROBS), (3000, 64, 1)])
def test_logprobs_kernels_any_k(vocab, block, k):
    """k = vocab < MAX_LOGPROBS (one chunk mostly padding), more k than chunks (3), and k = 1."""
    torch.manual_seed(vocab)
    logits = torch.randn(2, vocab, device=DEVICE) * 3
    check(logits, torch.tensor([vocab - 1, 0], device=DEVICE), k, block)


def test_logprobs_kernels_scatter_rows_through_an_index():
    """With index, row i lands in row index[i]; the other rows keep what they held (write_rows's use)."""
    torch.manual_seed(2)
    logits, tokens = torch.randn(2, 1500, device=DEVICE), torch.tensor([7, 1499], device=DEVICE)
    values = torch.full((4, 1 + MAX_LOGPROBS), 9.0, device=DEVICE)
    ids = torch.full((4, MAX_LOGPROBS), -1, dtype=torch.int64, device=DEVICE)
    ops.pruned_logprobs(logits, tokens, values, ids, index=torch.tensor([3, 1], device=DEVICE), block=64)
    want_values, want_ids = compute_logprobs(logits, tokens, MAX_LOGPROBS)
    torch.testing.assert_close(values[[3, 1]], want_values, rtol=1e-5, atol=1e-6)
    assert torch.equal(ids[[3, 1]], want_ids)
    assert (values[[0, 2]] == 9.0).all() and (ids[[0, 2]] == -1).all()


def test_logprobs_kernels_reject_what_they_cannot_do():
    logits, tokens = torch.randn(2, 64, device=DEVICE), torch.zeros(2, dtype=torch.int64, device=DEVICE)
    values, ids = torch.empty(2, 21, device=DEVICE), torch.empty(2, 20, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="power of two"):
        ops.pruned_logprobs(logits, tokens, values, ids, block=48)
    with pytest.raises(ValueError, match="1 \\+ k columns"):
        ops.pruned_logprobs(logits, tokens, values[:, :20], ids)
    with pytest.raises(ValueError, match="k=33"):
        ops.compute_through_kernels(logits, tokens, 33, block=64)
    with pytest.raises(ValueError, match="float32"):
        ops.pruned_logprobs(logits, tokens, values.double(), ids)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # -inf - -inf
def test_pruned_logprobs_with_masks_over_many_chunks():
    """32 chunks of 64 (the last ragged): fewer chunks with a finite logit than k (so T is -inf), whole
    chunks masked, and a row all -inf: NaN values as torch gives, ids the lowest (the tie rule)."""
    torch.manual_seed(4)
    vocab, k = 2000, MAX_LOGPROBS
    logits = torch.randn(3, vocab, device=DEVICE) * 3
    finite = torch.tensor([70, 71, 640, 1990, 1999], device=DEVICE)  # 5 logits in 4 chunks
    logits[0] = float("-inf")
    logits[0, finite] = torch.tensor([1.0, 1.0, -2.0, 4.0, 0.5], device=DEVICE)
    logits[1, : 10 * 64] = float("-inf")
    logits[1, ::3] = float("-inf")
    logits[2] = float("-inf")
    tokens = torch.tensor([1999, 5, 0], device=DEVICE)
    values, ids = check(logits, tokens, k, block=64)
    assert ids[0, :5].tolist() == [1990, 70, 71, 1999, 640] and ids[0, 5:].tolist() == list(range(15))
    assert torch.isnan(values[2]).all() and ids[2].tolist() == list(range(k))


def test_pruned_logprobs_where_the_top_k_crowds_into_chunks():
    """Rows whose top k sit in few chunks: all 20 in one chunk (more than K_PAD logits >= T there, so that
    chunk is sorted), 12 in one chunk (compacted), one constant row (every chunk max tied: chunks ranked
    by index, ids by the tie rule), and 25 chunks whose max is the same 5.0 (the 20 lowest ids win)."""
    torch.manual_seed(5)
    vocab, k, block = 2048, MAX_LOGPROBS, 64
    logits = torch.randn(4, vocab, device=DEVICE)
    logits[0, 640:704] += 10.0
    logits[1, 1000:1012] += 10.0
    logits[2] = 0.0
    logits[3] = logits[3].clamp(max=4.0)
    logits[3, torch.arange(25, device=DEVICE) * block + torch.randint(0, block, (25,), device=DEVICE)] = 5.0
    tokens = torch.tensor([650, 3, 2047, 100], device=DEVICE)
    _, ids = check(logits, tokens, k, block, untied=False)
    assert ((ids[0] >= 640) & (ids[0] < 704)).all() and ids[2].tolist() == list(range(k))
    assert (ids[3] // block).tolist() == list(range(k))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_kernels_in_a_cuda_graph_at_full_vocab(dtype):
    """Qwen3's vocabulary at the shipped block, captured once, replayed on new logits: equal to
    compute_logprobs each time."""
    n, vocab = 4, 151936
    logits = torch.randn(n, vocab, device="cuda").to(dtype)
    tokens = torch.tensor([0, vocab - 1, 5, 70000], device="cuda")
    values = torch.empty(n, 1 + MAX_LOGPROBS, device="cuda")
    ids = torch.empty(n, MAX_LOGPROBS, dtype=torch.int64, device="cuda")
    ops.pruned_logprobs(logits, tokens, values, ids)  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.pruned_logprobs(logits, tokens, values, ids)
    for scale in (1.0, 5.0):
        logits.copy_(torch.randn(n, vocab, device="cuda") * scale)
        logits[1, 1000:1064] = float("-inf")  # a masked chunk
        graph.replay()
        want_values, want_ids = compute_logprobs(logits, tokens, MAX_LOGPROBS)
        torch.testing.assert_close(values, want_values, rtol=1e-5, atol=1e-5)
        tied = logits.gather(1, ids) == logits.gather(1, want_ids)
        assert bool(((ids == want_ids) | tied).all())


def test_logprob_buffers_kernel_path_writes_what_the_torch_path_writes(monkeypatch):
    """LogprobBuffers' two writers through pruned_logprobs (forced here: on the CPU the engine takes the
    torch path) leave the same rows as through compute_logprobs."""
    from graphrun.llm import logprobs as buffers_module

    torch.manual_seed(3)
    vocab, rows = 1000, 6
    logits, tokens = torch.randn(3, vocab, device=DEVICE) * 3, torch.tensor([5, 999, 0], device=DEVICE)
    index = torch.tensor([4, 0, 2], device=DEVICE)
    calls = []
    shipped = ops.pruned_logprobs
    monkeypatch.setattr(ops, "pruned_logprobs", lambda *a, **kw: calls.append(kw) or shipped(*a, **kw))
    written = {}
    for kernels in (False, True):
        monkeypatch.setattr(buffers_module, "_kernels", lambda logits, kernels=kernels: kernels)
        prefix = buffers_module.LogprobBuffers(rows, vocab, torch.device(DEVICE))
        prefix.write_prefix(logits, tokens)
        scattered = buffers_module.LogprobBuffers(rows, vocab, torch.device(DEVICE))
        scattered.write_rows(index, logits, tokens)
        written[kernels] = (prefix, scattered)
    assert [sorted(kw) for kw in calls] == [[], ["index"]]  # the kernel path taken, at the shipped block
    for want, got in zip(written[False], written[True], strict=True):
        torch.testing.assert_close(got.values, want.values, rtol=1e-5, atol=1e-6)
        assert torch.equal(got.top_ids, want.top_ids)  # random float32 logits: no ties
    assert written[True][1].values[[1, 3, 5]].abs().sum() == 0  # rows not in index untouched
