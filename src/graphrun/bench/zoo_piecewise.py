"""The zoo's piecewise section: models FULL capture cannot take, run in modes full and piecewise.

Two models: an MLP with one uncapturable op in the middle (it reads a scale on the host with `.item()`,
so a FULL capture fails and every call runs eager) and a random-init Hugging Face BERT (its attention-mask
code reads the mask on the host in eager mode). Each runs eager, in mode full (falls back, counted) and in
mode piecewise (segments captured, the op run eagerly between them). The reference is the same MLP
without the op, in mode full: the target is piecewise speedup >= 0.7x that FULL speedup, i.e. cutting
the graph at one op keeps most of the win. Run it with `python -m graphrun.bench.zoo_piecewise`; on a
machine without CUDA it runs the sim backend, a smoke test of the code path, not a measurement.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry
from torch import nn

from graphrun.bench.report import (
    device_slug,
    environment,
    goal,
    headline,
    print_goals,
    print_table,
    write_json,
)
from graphrun.bench.timing import summarize, time_interleaved
from graphrun.graphs.runner import GraphRunner
from graphrun.graphs.verify import mismatch

log = logging.getLogger(__name__)

TARGET_RATIO = 0.7  # piecewise speedup over the FULL speedup of the model without the op
COLUMNS = (
    "model",
    "batch",
    "mode",
    "captured",
    "outputs_match",
    "median_ms",
    "speedup",
    "eager_calls",
    "splits",
)


class SyncMLP(nn.Module):
    """Linear stack with one host read in the middle (sync=False: the same model without it)."""

    def __init__(self, dim: int, depth: int, sync: bool = True) -> None:
        super().__init__()
        self.first = nn.Sequential(*(nn.Sequential(nn.Linear(dim, dim), nn.GELU()) for _ in range(depth)))
        self.second = nn.Sequential(*(nn.Sequential(nn.Linear(dim, dim), nn.GELU()) for _ in range(depth)))
        self.sync = sync

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        if self.sync:
            h = h / (1.0 + h.abs().amax().item())  # the uncapturable op: a host read of a device value
        return self.second(h)


class BertEncoder(nn.Module):
    """A random-init transformers BERT, returning the last hidden state."""

    def __init__(self, small: bool) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        hidden, layers = (32, 2) if small else (256, 4)
        config = BertConfig(
            vocab_size=1000,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=4 * hidden,
            max_position_embeddings=128,
            attn_implementation="sdpa",  # type: ignore[call-arg]  # a PretrainedConfig keyword
        )
        self.bert = BertModel(config).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


Inputs = Callable[[int], tuple[torch.Tensor, ...]]


def _models(small: bool, device: torch.device, dtype: torch.dtype) -> list[tuple[str, nn.Module, Inputs]]:
    dim, depth, seq = (32, 2, 8) if small else (1024, 8, 64)  # deep enough that launches dominate
    gen = torch.Generator().manual_seed(0)

    def rows(n: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(n, dim, generator=gen).to(device, dtype),)

    def tokens(n: int) -> tuple[torch.Tensor, ...]:
        ids = torch.randint(0, 1000, (n, seq), generator=gen).to(device)
        return ids, torch.ones(n, seq, dtype=torch.long, device=device)

    torch.manual_seed(0)
    base = SyncMLP(dim, depth, sync=False)
    synced = SyncMLP(dim, depth)
    synced.load_state_dict(base.state_dict())
    bert = BertEncoder(small)
    built = [
        ("mlp_without_op", base, rows),
        ("mlp_one_uncapturable_op", synced, rows),
        ("hf_bert", bert, tokens),
    ]
    return [
        (name, model.to(device, dtype if name != "hf_bert" else torch.float32).eval(), make)
        for name, model, make in built
    ]


def _row(
    name: str, batch: int, mode: str, runner: GraphRunner | None, stats: dict[str, float], eager_ms: float
) -> dict[str, Any]:
    status = runner.status() if runner is not None else None
    return {
        "model": name,
        "batch": batch,
        "mode": mode,
        "captured": all(s.captured for s in status) if status is not None else False,
        "median_ms": stats["median_ms"],
        "speedup": eager_ms / stats["median_ms"],
        "eager_calls": sum(runner.stats.eager_fallback.values()) if runner is not None else None,
        "splits": len(status.splits) if status is not None else 0,
    }


def bench_model(
    name: str, model: nn.Module, make: Inputs, batch: int, modes: Sequence[str], backend: str, iters: int
) -> list[dict[str, Any]]:
    """Eager and one runner per mode at one batch size, timed interleaved; outputs checked against eager."""
    sync = torch.cuda.synchronize if backend == "cuda" else (lambda: None)
    example, x = make(batch), make(batch)
    runners = {
        mode: GraphRunner(
            model, example, sizes=[batch], backend=backend, mode=mode, registry=CollectorRegistry()
        )
        for mode in modes
    }
    with torch.no_grad():
        want = model(*x)
        matches = {mode: mismatch(runner(*x), want) for mode, runner in runners.items()}
        fns: dict[str, Callable[[], object]] = {"eager": lambda: model(*x)}
        fns.update({mode: functools.partial(runner, *x) for mode, runner in runners.items()})
        times = time_interleaved(fns, iters, max(2, iters // 10), sync)
    stats = {key: summarize(t) for key, t in times.items()}
    eager_ms = stats["eager"]["median_ms"]
    rows = [_row(name, batch, "eager", None, stats["eager"], eager_ms)]
    for mode in modes:
        rows.append(_row(name, batch, mode, runners[mode], stats[mode], eager_ms))
        rows[-1]["outputs_match"], rows[-1]["mismatch"] = matches[mode] is None, matches[mode] or ""
    for runner in runners.values():
        runner.close()
    return rows


def targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per batch: piecewise speedup of the op model over the FULL speedup of the model without it."""
    found = {(r["model"], r["batch"], r["mode"]): r for r in rows}
    goals = []
    for (model, batch, mode), row in sorted(found.items()):
        if model == "mlp_one_uncapturable_op" and mode == "piecewise":
            full = found.get(("mlp_without_op", batch, "full"))
            ratio = row["speedup"] / full["speedup"] if full else None
            goals.append(goal(f"piecewise/full speedup, batch {batch}", ratio, ">=", TARGET_RATIO, "x"))
    return goals


def main(argv: Sequence[str] | None = None) -> int:
    """Run the section: a table, the targets, then one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny models (CPU smoke runs)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--out", default=None, help="folder for zoo-piecewise-<device>.json (default: none)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    backend, device = ("cuda", torch.device("cuda")) if cuda else ("sim", torch.device("cpu"))
    dtype = torch.bfloat16 if cuda else torch.float32
    iters = args.iters if cuda else min(args.iters, 20)
    rows: list[dict[str, Any]] = []
    for name, model, make in _models(args.small, device, dtype):
        modes = ("full",) if name == "mlp_without_op" else ("full", "piecewise")
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            rows += bench_model(name, model, make, batch, modes, backend, iters)
    env = environment()
    print(headline(env) + ("" if cuda else " (sim backend: code path only, timings mean nothing)"))
    print_table(rows, COLUMNS)
    goals = targets(rows)
    print_goals(goals)
    ok = all(r.get("outputs_match", True) for r in rows)
    payload = {
        "bench": "zoo_piecewise",
        "backend": backend,
        "ok": ok,
        "env": env,
        "rows": rows,
        "targets": goals,
    }
    print(json.dumps(payload))
    if args.out is not None:
        path = write_json(Path(args.out) / f"zoo-piecewise-{device_slug(env['device'])}.json", payload)
        log.info("zoo_piecewise: wrote %s", path)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
