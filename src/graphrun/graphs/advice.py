"""Ladder advice: from the sizes traffic had, the rungs that waste the least padding for a graph budget.

No peer has it: vLLM and TensorRT take a ladder from the user and never say what it costs. The runner
already counts calls per size (size_histogram.py; `graphrun_cuda_graph_batch_size` and, for bucketed
runners, `graphrun_bucket_size{dim}`), so the advice reads a histogram {size: calls} per dim and answers,
per dim, today's ladder and the recommended one with the padding each would have cost that traffic.

One dim: the exact optimum (sizes.best_ladders, a dynamic programme) for at most `max_graphs` rungs.
Several dims (batch x length buckets): the graphs are the product of the per-dim rung counts, and a
call's padded volume is the product of its rungs. Only per-dim histograms are recorded, so the dims are
taken as independent: then the expected padded volume is the product of each dim's mean rung, each
dim's optimum for a given rung count minimises its mean rung, and the best split of the budget is the
combination of per-dim rung counts (product <= max_graphs) whose product of mean rungs is least. That
is exact under independence; correlated dims (long inputs coming in small batches) make it an estimate.

Memory: graphs of one runner share a pool that grows to the largest capture, not the sum, so memory
bounds the top rung rather than the count: `max_size` (per dim) caps the rungs, and sizes above it are
left to run eager (counted in the report).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from graphrun.errors import ConfigError
from graphrun.graphs.sizes import PaddingReport, best_ladders, default_ladder, padding_report_counts
from graphrun.graphs.status import text_table

Histogram = Mapping[int, int]  # size -> number of calls


@dataclass(frozen=True, slots=True)
class DimAdvice:
    """One dim: today's ladder and the recommended one, with what each costs the recorded traffic."""

    dim: str
    current: tuple[int, ...]
    recommended: tuple[int, ...]
    current_report: PaddingReport
    recommended_report: PaddingReport
    num_unknown: int = 0  # calls above the histogram's top bucket: their size was not kept

    @staticmethod
    def mean_rung(report: PaddingReport) -> float:
        """Mean padded size of the calls a ladder serves (their rows plus padding, per call)."""
        served = report.num_calls - report.num_eager_calls
        return (report.num_rows + report.num_padded_rows) / served if served else 0.0


@dataclass(frozen=True, slots=True)
class LadderAdvice:
    """Per-dim advice for one runner and the graph budget it was given."""

    dims: tuple[DimAdvice, ...]
    max_graphs: int

    @property
    def num_graphs_current(self) -> int:
        """Graphs today's ladders capture (the product over dims)."""
        return math.prod(len(d.current) for d in self.dims)

    @property
    def num_graphs_recommended(self) -> int:
        """Graphs the recommended ladders capture."""
        return math.prod(len(d.recommended) for d in self.dims)

    def waste(self, recommended: bool) -> float:
        """Padded fraction of the elements graphs compute (dims independent): 1 - prod real / prod padded."""
        real = padded = 1.0
        for d in self.dims:
            report = d.recommended_report if recommended else d.current_report
            served = report.num_calls - report.num_eager_calls
            real *= report.num_rows / served if served else 0.0
            padded *= DimAdvice.mean_rung(report)
        return 1.0 - real / padded if padded else 0.0

    def table(self) -> str:
        """One line per dim and ladder (today, recommended), then the whole."""
        rows = []
        for d in self.dims:
            for label, ladder, report in (
                ("today", d.current, d.current_report),
                ("recommended", d.recommended, d.recommended_report),
            ):
                rows.append((d.dim, label, str(len(ladder)), _ladder_text(ladder),
                             f"{100 * report.padding_ratio:.1f}%", str(report.num_eager_calls)))  # fmt: skip
        totals = (
            ("today", False, self.num_graphs_current),
            ("recommended", True, self.num_graphs_recommended),
        )
        for label, rec, n in totals if len(self.dims) > 1 else ():
            rows.append(("all", label, str(n), "(product)", f"{100 * self.waste(rec):.1f}%", "-"))
        head = f"ladder advice, at most {self.max_graphs} graphs"
        headers = ("dim", "ladder", "graphs", "rungs", "padding", "eager calls")
        return head + "\n" + text_table(headers, rows, align="llrlrr")

    def to_json(self) -> dict[str, object]:
        """The advice as plain JSON types."""
        return {
            "max_graphs": self.max_graphs,
            "graphs": {"current": self.num_graphs_current, "recommended": self.num_graphs_recommended},
            "waste": {"current": self.waste(False), "recommended": self.waste(True)},
            "dims": [
                {
                    "dim": d.dim,
                    "current": list(d.current),
                    "recommended": list(d.recommended),
                    "padding_ratio": {
                        "current": d.current_report.padding_ratio,
                        "recommended": d.recommended_report.padding_ratio,
                    },
                    "eager_calls": {
                        "current": d.current_report.num_eager_calls,
                        "recommended": d.recommended_report.num_eager_calls,
                    },
                    "calls_above_histogram": d.num_unknown,
                }
                for d in self.dims
            ],
        }


def advise(
    histograms: Mapping[str, Histogram],
    max_graphs: int | None = None,
    current: Mapping[str, Sequence[int]] | None = None,
    max_size: Mapping[str, int] | None = None,
    unknown: Mapping[str, int] | None = None,
) -> LadderAdvice:
    """Recommend a ladder per dim (module docstring) for at most `max_graphs` graphs in all.

    current: today's ladder per dim (default: graphrun's default ladder up to the largest size seen);
    max_graphs defaults to today's count. max_size caps a dim's rungs (memory); unknown counts calls
    per dim whose size the histogram did not keep (above its top bucket).
    """
    if not histograms:
        raise ConfigError("no histogram to advise on: the runner has recorded no calls yet")
    current = dict(current or {})
    todays = {d: tuple(sorted(current.get(d) or default_ladder(max(h)))) for d, h in histograms.items()}
    budget = max_graphs if max_graphs is not None else math.prod(len(t) for t in todays.values())
    if budget < 1:
        raise ConfigError(f"max_graphs must be >= 1, got {budget}")
    capped = {d: _capped(h, (max_size or {}).get(d)) for d, h in histograms.items()}
    options = {d: best_ladders(h, budget) for d, h in capped.items()}
    chosen = _best_split(capped, options, budget)
    return LadderAdvice(
        tuple(
            DimAdvice(
                d,
                todays[d],
                chosen[d],
                padding_report_counts(todays[d], h),
                padding_report_counts(chosen[d], h),
                (unknown or {}).get(d, 0),
            )
            for d, h in histograms.items()
        ),
        budget,
    )


def _capped(counts: Histogram, cap: int | None) -> dict[int, int]:
    kept = {n: c for n, c in counts.items() if c > 0 and (cap is None or n <= cap)}
    if not kept:
        raise ConfigError(f"no size at or below the cap {cap} was recorded; raise the memory budget")
    return kept


def _best_split(
    counts: Mapping[str, Histogram], options: Mapping[str, list[tuple[int, ...]]], budget: int
) -> dict[str, tuple[int, ...]]:
    """One ladder per dim, rung counts multiplying to at most `budget`, least product of mean rungs."""
    dims = list(options)
    means = {
        d: [DimAdvice.mean_rung(padding_report_counts(lad, counts[d])) for lad in options[d]] for d in dims
    }
    best: tuple[float, int, tuple[int, ...]] | None = None  # (volume, graphs, ladder index per dim)
    for picks in itertools.product(*(range(len(options[d])) for d in dims)):
        graphs = math.prod(len(options[d][i]) for d, i in zip(dims, picks, strict=True))
        if graphs > budget:
            continue
        volume = math.prod(means[d][i] for d, i in zip(dims, picks, strict=True))
        if best is None or (volume, graphs) < best[:2]:
            best = (volume, graphs, picks)
    assert best is not None  # one rung per dim is always within a budget >= 1
    return {d: options[d][i] for d, i in zip(dims, best[2], strict=True)}


def _ladder_text(ladder: Sequence[int], limit: int = 12) -> str:
    if len(ladder) <= limit:
        return ",".join(map(str, ladder))
    head = ",".join(map(str, ladder[: limit - 2]))
    return f"{head},...,{ladder[-1]}"
