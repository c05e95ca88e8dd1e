"""Where `graphrun ladder` reads traffic from: a JSON histogram, or a server's Prometheus /metrics.

Torch-free. A JSON file is {size: calls} (one dim, "batch") or {dim: {size: calls}}. A metrics text is
read for `graphrun_bucket_size{runner,dim}` (a BucketedRunner: one histogram per dim) or
`graphrun_cuda_graph_batch_size{runner}` (a GraphRunner), or any histogram named with `metric`; its
cumulative buckets become counts at each bucket's upper bound (a rung there covers every call in the
bucket), and the +Inf bucket's excess is reported as calls whose size was not kept.
"""

from __future__ import annotations

import json
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from graphrun.errors import ConfigError

BUCKET_METRIC = "graphrun_bucket_size"
BATCH_METRIC = "graphrun_cuda_graph_batch_size"
BATCH = "batch"


@dataclass(frozen=True, slots=True)
class Traffic:
    """Per dim, calls per size; per dim, calls above the largest bucket (size unknown); whose traffic."""

    histograms: dict[str, dict[int, int]]
    unknown: dict[str, int] = field(default_factory=dict)
    runner: str = ""


def from_json_file(path: Path) -> Traffic:
    """Read {size: calls} or {dim: {size: calls}} from a JSON file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read a JSON histogram from {path}: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"{path}: expected {{size: calls}} or {{dim: {{size: calls}}}}, got {type(data).__name__}"
        )
    nested = all(isinstance(v, dict) for v in data.values())
    dims = data if nested else {BATCH: data}
    return Traffic({str(dim): _int_counts(counts, path) for dim, counts in dims.items()})


def _int_counts(counts: dict[str, object], path: Path) -> dict[int, int]:
    out: dict[int, int] = {}
    for size, calls in counts.items():
        try:
            n, k = int(size), int(str(calls))
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: sizes and calls must be integers, got {size!r}: {calls!r}") from None
        if n < 1 or k < 0:
            raise ConfigError(f"{path}: sizes must be >= 1 and calls >= 0, got {n}: {k}")
        out[n] = out.get(n, 0) + k
    return out


def fetch_metrics(url: str, timeout: float = 10.0) -> str:
    """GET a Prometheus text page."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--from-metrics takes an http(s) URL of a /metrics page, got {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return str(response.read().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {url}: {exc}") from None


Series = dict[str, dict[str, dict[str, list[tuple[float, float]]]]]  # family -> runner -> dim -> buckets


def from_metrics_text(text: str, runner: str | None = None, metric: str | None = None) -> Traffic:
    """The traffic of one runner in a metrics text (module docstring); `runner` picks among several."""
    names = (metric,) if metric else (BUCKET_METRIC, BATCH_METRIC)
    series: Series = {name: defaultdict(lambda: defaultdict(list)) for name in names}
    for family in text_string_to_metric_families(text):
        if family.name not in series:
            continue
        for sample in family.samples:
            if sample.name == family.name + "_bucket":
                labels = sample.labels
                dims = series[family.name][labels.get("runner", "")]
                dims[labels.get("dim", BATCH)].append((float(labels["le"]), float(sample.value)))
    name, chosen = _choose(series, runner)
    traffic = Traffic({}, {}, chosen)
    for dim, buckets in series[name][chosen].items():
        traffic.histograms[dim], traffic.unknown[dim] = _counts(buckets)
    return traffic


def _calls(dims: dict[str, list[tuple[float, float]]]) -> int:
    return int(max((max(c for _, c in b) for b in dims.values() if b), default=0))


def _choose(series: Series, runner: str | None) -> tuple[str, str]:
    """(family, runner): the named runner, else the one runner with calls (bucketed runners first)."""
    if runner is not None:
        for name, runners in series.items():
            if runner in runners:
                return name, runner
        seen = sorted({r for runners in series.values() for r in runners})
        raise ConfigError(f"no histogram for runner {runner!r} in the metrics; runners there: {seen}")
    for name, runners in series.items():
        busy = {r: _calls(dims) for r, dims in runners.items() if _calls(dims) > 0}
        if len(busy) == 1:
            return name, next(iter(busy))
        if len(busy) > 1:
            raise ConfigError(f"several runners recorded calls ({busy}); pick one with --runner")
    raise ConfigError(f"no runner recorded any call in histograms {sorted(series)}; nothing to advise on")


def _counts(buckets: list[tuple[float, float]]) -> tuple[dict[int, int], int]:
    """Cumulative (le, count) buckets -> {upper bound: calls in the bucket}, and the calls above the last."""
    counts, previous, unknown = {}, 0.0, 0
    for bound, cumulative in sorted(buckets):
        calls = round(cumulative - previous)
        previous = cumulative
        if bound == float("inf"):
            unknown = calls
        elif calls > 0:
            counts[int(bound)] = calls
    return counts, unknown
