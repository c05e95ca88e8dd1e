"""GraphRunner's pure-Python cost per call, on the CPU: a runner call against the same copies done by hand.

`graphrun bench zoo` reports, on a GPU, the runner's "overhead over bare replay": median(runner(x)) minus
median(graph.replay()), every call timed alone between device syncs. On a GPU-bound graph the host work
after the replay launch hides behind the device, but everything before it (flatten, validate, pick the
rung, copy in, pad) and the copy kernel's launch add to the call. Here the replay does nothing (a
backend whose graphs replay as a no-op, named for what it is), so what remains is the runner's own
Python, which is what that overhead is made of, measurable without a GPU and without device noise:

- runner:       runner(x)                     vs  by hand: static.copy_(x); replay()
- zero_copy:    runner(*runner.static_inputs) vs  by hand: replay()
- to replay:    from the call's start to the replay, runner vs by hand (on a GPU-bound graph the host
                work after the launch overlaps the device, so this part is what `bench zoo` sees)

for a one-tensor MLP-like call at batch 1 (its rung), batch 3 on rung 4 (padded), and a pytree call
(a tuple and a dict of tensors, one of them shared). Each number is the median over --rounds rounds of
the mean of --calls back-to-back calls, runner and hand interleaved round by round.

    PYTHONPATH=src python benchmarks/runner_overhead.py [--rounds 400] [--calls 200] [--out FILE.json]

Prints a table, then one JSON line; --out also writes the JSON (with the environment: torch, commit...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from graphrun.bench.report import environment, print_table, write_json
from graphrun.graphs import GraphRunner


class NoOpGraph:
    """A "graph" whose replay does nothing but note when it was called: what is left of a runner call is
    the runner's own work, and the note splits it into before the launch and after."""

    nbytes = 0

    def __init__(self) -> None:
        self.launched_at = 0

    def replay(self) -> None:
        """Nothing but the time stamp: the outputs keep what the capture run wrote."""
        self.launched_at = time.perf_counter_ns()

    def release(self) -> None:
        """Nothing to free."""


class NoOpReplayBackend:
    """A backend for measuring host overhead only: capture runs the body once, replay does nothing.

    Not a simulator: outputs go stale after the first call, so runners built on it skip verification.
    """

    name = "noop-replay"
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.graphs: list[NoOpGraph] = []

    def warmup(self, body: Callable[[], object], iters: int) -> None:
        body()

    def estimate_bytes(self, body: Callable[[], object]) -> int:
        return 0

    def projected_pool_bytes(self, estimate: int) -> int:
        return 0

    def capture(self, body: Callable[[], object], label: str = "") -> NoOpGraph:
        body()
        self.graphs.append(NoOpGraph())
        return self.graphs[-1]

    def pool_bytes(self) -> int:
        return 0

    def synchronize(self) -> None:
        pass

    @contextlib.contextmanager
    def range(self, label: str) -> Iterator[None]:
        yield


@dataclass(frozen=True, slots=True)
class Case:
    """One call shape: the runner, its call's args, and the same work by hand."""

    name: str
    runner: GraphRunner
    args: tuple[Any, ...]
    by_hand: Callable[[], None]
    zero_copy_args: tuple[Any, ...]
    runner_graph: NoOpGraph  # the graph the runner's call replays
    hand_graph: NoOpGraph  # the one the by-hand call replays


def _mlp(width: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width))


def _runner(fn: Callable[..., Any], example: tuple[Any, ...], name: str, **options: Any) -> GraphRunner:
    backend = NoOpReplayBackend()
    return GraphRunner(
        fn, example, backend=backend, verify=False, name=name, registry=CollectorRegistry(), **options
    )


def _replayed(runner: GraphRunner, rung: int) -> NoOpGraph:
    """The NoOpGraph of `rung` (the backend captured the rungs largest first)."""
    backend = runner.backend
    assert isinstance(backend, NoOpReplayBackend)
    return backend.graphs[sorted(runner.sizes, reverse=True).index(rung)]


def _tensor_case(name: str, batch: int, sizes: list[int]) -> Case:
    model, width = _mlp(), 64
    runner = _runner(model, (torch.randn(sizes[-1], width),), name, sizes=sizes)
    x = torch.randn(batch, width)
    static = torch.randn(sizes[-1], width)
    rung = min(s for s in sizes if s >= batch)
    rows, rest, last = static[:batch], static[batch:rung], static[batch - 1 : batch].expand(rung - batch, -1)
    graph = NoOpGraph()
    noop = graph.replay

    def by_hand() -> None:
        rows.copy_(x)
        if batch != rung:  # pad="repeat", as the runner does
            rest.copy_(last)
        noop()

    zero_args, _ = runner.static_inputs(batch)
    return Case(name, runner, (x,), by_hand, zero_args, _replayed(runner, rung), graph)


def _pytree_case(name: str) -> Case:
    width = 64

    def fn(
        pair: tuple[torch.Tensor, torch.Tensor], extra: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {"y": pair[0] * extra["scale"] + pair[1], "z": extra["bias"] + pair[1]}

    def inputs() -> tuple[Any, ...]:
        pair = (torch.randn(1, width), torch.randn(1, width))
        return (pair, {"scale": torch.randn(width), "bias": torch.randn(1, width)})

    runner = _runner(fn, inputs(), name, sizes=[1], batch_dims=(0, {"scale": None, "bias": 0}))
    call = inputs()
    statics = [torch.empty_like(t) for t in (call[0][0], call[0][1], call[1]["scale"], call[1]["bias"])]
    sources = [call[0][0], call[0][1], call[1]["scale"], call[1]["bias"]]
    pairs = list(zip(statics, sources, strict=True))
    graph = NoOpGraph()
    noop = graph.replay

    def by_hand() -> None:
        for static, source in pairs:
            static.copy_(source)
        noop()

    zero_args, _ = runner.static_inputs(1)
    return Case(name, runner, call, by_hand, zero_args, _replayed(runner, 1), graph)


def _per_call_us(fn: Callable[[], object], calls: int) -> float:
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(calls):
        fn()
    return (clock() - start) / calls / 1e3


def _to_launch_us(fn: Callable[[], object], graph: NoOpGraph, calls: int) -> float:
    """Median microseconds from a call's start to its replay (what a GPU-bound call pays)."""
    clock, spans = time.perf_counter_ns, []
    for _ in range(calls):
        start = clock()
        fn()
        spans.append(graph.launched_at - start)
    return statistics.median(spans) / 1e3


def measure(case: Case, rounds: int, calls: int) -> dict[str, Any]:
    """Median per-call microseconds of each mode, interleaved round by round; and to the replay."""
    runner, args, zero = case.runner, case.args, case.zero_copy_args
    replay = case.hand_graph.replay
    fns: dict[str, Callable[[], object]] = {
        "runner": lambda: runner(*args),
        "by_hand": case.by_hand,
        "runner_zero_copy": lambda: runner(*zero),
        "replay": replay,
    }
    for fn in fns.values():  # warm-up
        _per_call_us(fn, calls)
    samples: dict[str, list[float]] = {mode: [] for mode in fns}
    for _ in range(rounds):
        for mode, fn in fns.items():
            samples[mode].append(_per_call_us(fn, calls))
    med = {mode: statistics.median(s) for mode, s in samples.items()}
    launch = {
        "runner": _to_launch_us(fns["runner"], case.runner_graph, rounds * 10),
        "by_hand": _to_launch_us(case.by_hand, case.hand_graph, rounds * 10),
    }
    assert runner.stats.num_replayed > 0 and not runner.stats.eager_fallback, "every call must replay"
    return {
        "case": case.name,
        **{f"{mode}_us": value for mode, value in med.items()},
        "overhead_us": med["runner"] - med["by_hand"],
        "zero_copy_overhead_us": med["runner_zero_copy"] - med["replay"],
        "runner_to_replay_us": launch["runner"],
        "by_hand_to_replay_us": launch["by_hand"],
        "overhead_to_replay_us": launch["runner"] - launch["by_hand"],
    }


def cases() -> list[Case]:
    return [
        _tensor_case("mlp-b1", 1, [1]),
        _tensor_case("mlp-b1-ladder", 1, [1, 2, 4, 8]),
        _tensor_case("mlp-b3-padded", 3, [1, 2, 4, 8]),
        _pytree_case("pytree-b1"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--label", default="", help="a word saying which code this is (before/after)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with torch.inference_mode():
        rows = [measure(case, args.rounds, args.calls) for case in cases()]
    columns = [
        "case",
        "runner_us",
        "by_hand_us",
        "overhead_us",
        "zero_copy_overhead_us",
        "overhead_to_replay_us",
    ]
    print_table(rows, columns)
    payload = {
        "benchmark": "runner_overhead",
        **environment(),
        "label": args.label,
        "timing": f"median over {args.rounds} rounds of the mean of {args.calls} calls; replay is a no-op",
        "results": rows,
    }
    if args.out:
        write_json(Path(args.out), payload)
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
