"""`bench serve --faults`: what the server does when things break under load, measured.

Two drills, each a run of its own after a mode's clean run (same workload, same seed):
- replay=RATE: the server runs with `--faults replay=RATE` (graphs/backends/faulty.py), so that fraction of
  graph replays fails and runs eager. The drill passes when no request fails, the server counted
  replay_error fallbacks, and no more requests streamed other greedy token ids than the clean run's
  (compared by a digest of each stream's ids) than in a control: a second clean run. On a GPU in half
  precision a token can follow the batch its step ran in, so two clean runs may differ; on the CPU's
  simulator in float32 the control and the drill must both match exactly.
- kill=FRACTION: once that fraction of the requests is done, the bench SIGKILLs the engine process. The
  drill passes when every request in flight at the kill ends with an error event or a 5xx (none hangs
  until the client's timeout, none ends as if complete), /health then says failed (or the server is
  already gone), and the server exits with a non-zero status, so that a supervisor restarts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from graphrun.bench.serve_client import RequestResult
from graphrun.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ServeFaults:
    """The drills to run: replay faults at `replay` (0: none), an engine kill at `kill_at` (None: none)."""

    replay: float = 0.0
    kill_at: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.replay <= 1.0:
            raise ConfigError(f"--faults replay=RATE takes a rate in [0, 1], got {self.replay}")
        if self.kill_at is not None and not 0.0 < self.kill_at < 1.0:
            raise ConfigError(f"--faults kill=FRACTION takes a fraction in (0, 1), got {self.kill_at}")

    @classmethod
    def parse(cls, text: str) -> ServeFaults:
        """ "replay=0.01", "kill=0.5" or both, comma-separated."""
        replay, kill_at = 0.0, None
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, sep, value = part.partition("=")
            try:
                number = float(value)
            except ValueError:
                number = None
            if not sep or number is None or key not in ("replay", "kill"):
                raise ConfigError(f"--faults takes replay=RATE and/or kill=FRACTION, got {part!r}")
            if key == "replay":
                replay = number
            else:
                kill_at = number
        return cls(replay, kill_at)

    def replay_server_args(self) -> list[str]:
        """The server flags of the replay drill."""
        return ["--faults", f"replay={self.replay}"]


Rows = Sequence[Mapping[str, Any]]


def compare_outputs(clean: Rows, drilled: Rows) -> dict[str, int]:
    """Requests (rows of summarize_run, by index) ok in both runs, and how many streamed the same ids."""
    before = {row["index"]: row for row in clean if row["ok"]}
    both = [(before[row["index"]], row) for row in drilled if row["ok"] and row["index"] in before]
    return {"compared": len(both), "same": sum(a["ids_digest"] == b["ids_digest"] for a, b in both)}


def kill_outcomes(results: Sequence[RequestResult], kill_time: float, timeout_s: float) -> dict[str, Any]:
    """How the requests in flight at `kill_time` (perf_counter) ended: error event, 5xx, hung (ran into
    the client timeout), cut (the stream stopped without [DONE] or an error), or complete."""
    counts = {"error_event": 0, "http_5xx": 0, "hung": 0, "cut": 0, "complete": 0, "other": 0}
    for r in results:
        end = r.sent_at + (r.latency_s if r.latency_s is not None else timeout_s)
        if not r.sent_at <= kill_time < end:
            continue  # done before the kill, or sent after it (those get a 503 at once)
        counts[_outcome(r, timeout_s)] += 1
    answered = counts["error_event"] + counts["http_5xx"]
    return {"in_flight": sum(counts.values()), **counts, "answered_with_error": answered}


def _outcome(r: RequestResult, timeout_s: float) -> str:
    if r.ok:
        return "complete"
    error = r.error or ""
    if error.startswith("error event"):
        return "error_event"
    if r.status is not None and r.status >= 500:
        return "http_5xx"
    if r.latency_s is None or r.latency_s >= timeout_s or "timed out" in error.lower():
        return "hung"
    if "without [DONE]" in error:
        return "cut"
    return "other"


def faults_goals(faults: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The drills' pass conditions, each with `met` (correctness, not timing: they hold on any machine)."""
    goals: list[dict[str, Any]] = []
    for drill in faults.get("replay", []):
        same, control = drill.get("outputs", {}), drill.get("control_outputs", {})
        beyond = None
        if same and control:
            beyond = (same["compared"] - same["same"]) - (control["compared"] - control["same"])
        goals += [
            _goal(f"{drill['mode']} replay faults: failed requests", drill.get("num_failed"), "0", 0),
            _goal(
                f"{drill['mode']} replay faults: replay_error fallbacks",
                drill.get("replay_error_fallbacks"),
                "> 0",
                None,
            ),
            _goal(
                f"{drill['mode']} replay faults: requests with other ids than clean, beyond a control's",
                beyond,
                "<= 0",
                None,
            ),
        ]
    for drill in faults.get("kill", []):
        outcome = drill.get("outcomes", {})
        bad = None if not outcome else outcome["in_flight"] - outcome["answered_with_error"]
        goals += [
            _goal(f"{drill['mode']} engine kill: in-flight requests not ended by an error", bad, "0", 0),
            _goal(f"{drill['mode']} engine kill: server exit status", drill.get("exit_code"), "!= 0", None),
        ]
    return goals


def _goal(name: str, value: Any, goal: str, equal: int | None) -> dict[str, Any]:
    if value is None:
        met = False
    elif equal is not None:
        met = value == equal
    elif goal == "> 0":
        met = value > 0
    elif goal == "<= 0":
        met = value <= 0
    else:  # "!= 0"
        met = value != 0
    return {"name": name, "value": value, "goal": goal, "met": met}
