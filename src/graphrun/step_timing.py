"""Where a served model's host time went in one step: the record step() leaves for timelines.

Torch-free and below every package, so the engine host (serve/host/), its observers and the trace read
it without importing an engine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StepTiming:
    """Where the host's time in the last step() went (time.perf_counter() seconds), for timelines.

    The LLM engine fills it (llm/engine.py). launched: the next batch is queued on the device
    (scheduling + packing + launch); waited: the tokens step() returns are on the host (step's
    on_launched callback, then the wait for the device); end: outputs built. kind/rows/tokens describe
    the batch launched (kind None: nothing was launched); waiting/running: the scheduler's queue and
    running set once the batch was scheduled.
    """

    start: float
    launched: float
    waited: float
    end: float
    kind: str | None
    rows: int
    tokens: int
    waiting: int = 0
    running: int = 0
