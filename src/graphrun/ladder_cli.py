"""`graphrun ladder`: recommend capture sizes from the traffic a runner saw, and say what today's cost.

    graphrun ladder --from-metrics http://127.0.0.1:8000/metrics [--runner NAME] [--max-graphs 8]
    graphrun ladder --from-json sizes.json --current batch=1,2,4,8 --max-graphs 4 --json

The settings are one frozen object built from the flags here (LadderSettings.from_args); the advice
itself is graphs/advice.py, the reading of traffic ladder_source.py.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from graphrun.errors import ConfigError, GraphrunError
from graphrun.refuse import refuse


@dataclass(frozen=True, slots=True)
class LadderSettings:
    """What `graphrun ladder` was asked: the traffic source, the budgets, today's ladders, the output."""

    metrics_url: str | None = None
    json_file: Path | None = None
    runner: str | None = None
    metric: str | None = None
    max_graphs: int | None = None
    current: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    max_size: Mapping[str, int] = field(default_factory=dict)
    as_json: bool = False

    def __post_init__(self) -> None:
        if (self.metrics_url is None) == (self.json_file is None):
            raise ConfigError("give exactly one of --from-metrics URL or --from-json FILE")
        if self.max_graphs is not None and self.max_graphs < 1:
            raise ConfigError(f"--max-graphs must be >= 1, got {self.max_graphs}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LadderSettings:
        """The one place flags become settings."""
        return cls(
            metrics_url=args.from_metrics,
            json_file=args.from_json,
            runner=args.runner,
            metric=args.metric,
            max_graphs=args.max_graphs,
            current={dim: tuple(_ints(v, "--current")) for dim, v in _pairs(args.current, "--current")},
            max_size={dim: int(v) for dim, v in _pairs(args.max_size, "--max-size")},
            as_json=args.json,
        )


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    """DIM=VALUE flags (a bare VALUE means the batch dim)."""
    pairs = []
    for value in values:
        dim, _, rest = value.rpartition("=")
        pairs.append((dim or "batch", rest))
        if not rest:
            raise ConfigError(f"{flag} takes DIM=VALUE (or VALUE for the batch dim), got {value!r}")
    return pairs


def _ints(text: str, flag: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"{flag}: sizes must be positive integers, got {text!r}")
    return sizes


def add_ladder_parser(sub: argparse._SubParsersAction) -> None:
    """Register `ladder` and its flags."""
    p = sub.add_parser("ladder", help="recommend capture sizes from recorded traffic (metrics or JSON)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-metrics", metavar="URL", help="a server's Prometheus /metrics URL")
    source.add_argument(
        "--from-json",
        metavar="FILE",
        type=Path,
        help="a JSON histogram {size: calls} or {dim: {size: calls}}",
    )
    p.add_argument("--runner", default=None, help="the runner to advise (needed when several recorded calls)")
    p.add_argument(
        "--metric", default=None, help="read this histogram instead of graphrun's (e.g. a batcher's)"
    )
    p.add_argument("--max-graphs", type=int, default=None, help="graph budget (default: today's count)")
    p.add_argument(
        "--current", action="append", default=[], metavar="DIM=SIZES",
        help="today's ladder, e.g. batch=1,2,4,8 or length=32,64,128 (repeatable; default: graphrun's "
        "default ladder up to the largest size seen)",
    )  # fmt: skip
    p.add_argument(
        "--max-size", action="append", default=[], metavar="DIM=N",
        help="cap a dim's rungs (memory: the graph pool grows with the top rung); larger calls run eager",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run_ladder(args: argparse.Namespace) -> int:
    """Read the traffic, advise, print a table (or JSON); 2 with one line on stderr on a problem."""
    try:
        settings = LadderSettings.from_args(args)
        from graphrun.graphs.advice import advise
        from graphrun.ladder_source import fetch_metrics, from_json_file, from_metrics_text

        if settings.json_file is not None:
            traffic = from_json_file(settings.json_file)
        else:
            assert settings.metrics_url is not None
            text = fetch_metrics(settings.metrics_url)
            traffic = from_metrics_text(text, settings.runner, settings.metric)
        advice = advise(
            traffic.histograms, settings.max_graphs, settings.current, settings.max_size, traffic.unknown
        )
    except GraphrunError as exc:
        return refuse("ladder", exc)
    if settings.as_json:
        print(json.dumps({"runner": traffic.runner, **advice.to_json()}))
        return 0
    if traffic.runner:
        print(f"runner {traffic.runner}")
    print(advice.table())
    for dim in advice.dims:
        if dim.num_unknown:
            print(f"{dim.dim}: {dim.num_unknown} calls above the histogram's top bucket (size not kept)")
    return 0
