"""The torch sampler's allowed set and the fused kernels' path per row, recomputed in float64 for the sampling
kernel tests (test_sampling_kernel.py, test_sampling_kernel_gpu.py): where to put top_p so rounding cannot
decide, and which path of kernels/sampling.py each row takes, so the tests can check that all ran."""

import torch

from graphrun.llm.noise import uniform_noise

INF = float("inf")


def scaled(logits: torch.Tensor, t: float) -> torch.Tensor:
    """A row's v = x / max(T, 1e-5) in float32, as the reference computes it."""
    return logits.float() / torch.tensor(t, dtype=torch.float32).clamp(min=1e-5)


def nucleus(v: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids in the stable descending order, float64 probs over the top k, mass strictly before each)."""
    ids = v.sort(descending=True, stable=True).indices
    ranked = v[ids].double()
    ranked[k:] = -INF
    probs = ranked.softmax(0)
    return ids, probs, probs.cumsum(0) - probs


def allowed(v: torch.Tensor, k: int, p: float) -> torch.Tensor:
    """The allowed set S as a mask over ids (float64 masses, ties ranked by id)."""
    vocab = v.numel()
    k = k if 0 < k < vocab else vocab
    ids, _, before = nucleus(v, k)
    ranks = torch.arange(vocab)
    keep = (ranks < k) & ((before <= p) | (ranks == 0) | (p >= 1))
    mask = torch.zeros(vocab, dtype=torch.bool)
    mask[ids[keep]] = True
    return mask


def snap_top_p(v: torch.Tensor, k: int, p: float, min_gap: float) -> float:
    """The top_p nearest p half-way between two cumulative masses at least min_gap apart."""
    vocab = v.numel()
    k = k if 0 < k < vocab else vocab
    _, probs, before = nucleus(v, k)
    mids = (before + probs / 2)[: k - 1]
    wide = (probs[: k - 1] >= min_gap) & torch.isfinite(mids)
    if not bool(wide.any()):
        return p
    return float(mids[wide][(mids[wide] - p).abs().argmin()])


def walk_steps(v: torch.Tensor, g: torch.Tensor, mask: torch.Tensor, k_pad: int) -> int:
    """Counting passes the finish kernel's walk makes (0: decided from the top k_pad list)."""
    order = v.sort(descending=True, stable=True).indices
    finite = int(torch.isfinite(v).sum())
    if int(mask.sum()) < k_pad or finite < k_pad:
        return 0
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    pv = v + g
    live = torch.ones_like(mask)
    steps = 0
    while True:
        best = pv[live].max()
        c = int(order[(pv[order] == best) & live[order]][0])  # the earliest in the order among the best
        if int(rank[c]) < k_pad:
            return steps
        steps += 1
        if bool(mask[c]):
            return steps
        live = rank < rank[c]


def paths(logits, params, positions, k_pad: int) -> list[str]:
    """The path each sampling row takes in the kernels: list, walk1 / walk2+ (counting passes), +mass."""
    out = []
    for i in range(logits.shape[0]):
        t, k, p = float(params.temperature[i]), int(params.top_k[i]), float(params.top_p[i])
        if t <= 0:
            continue
        v = scaled(logits[i], t)
        ids = torch.arange(v.numel())[None]
        g = -torch.log(-torch.log(uniform_noise(params.seeds[i : i + 1], positions[i : i + 1], ids)))[0]
        steps = walk_steps(v, g, allowed(v, k, p), k_pad)
        name = "list" if steps == 0 else "walk1" if steps == 1 else "walk2+"
        finite = int(torch.isfinite(v).sum())
        if p < 1 and k_pad < k < v.numel() and finite >= k_pad:
            name += "+mass"
        out.append(name)
    return out
