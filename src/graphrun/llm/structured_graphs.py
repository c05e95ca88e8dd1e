"""When the structured decode graphs are captured: at the first step with a grammar row, not at start-up.

A structured step replays three decode kinds that no other step touches (decode_step.py): the forward up
to the hidden states ("structured") and the masked sampling ("mask-greedy", "mask-sampling"). Captured
at start-up with the others, every engine paid for them, most of them engines that never see a grammar
(the overlap was taken out once for that, commit 08f8235: engine construction ~30% slower, CI over its
limit). On the 2-CPU box, simulator backend, one torch thread, tiny preset, median of 5 constructions:
with a test-sized ladder (1, 2, 4) 1.28 s with them at start-up, 1.09 s for main's one structured kind,
0.81 s with none; at the default ladder 14.6-14.9 s either way at start-up, 11.3-12.1 s with none. So
DecodeGraphs builds them only when asked (add_structured), and the engine asks at the first step whose
batch holds a grammar sequence (engine._step, before the batch launches):

- one rank (the usual case), whatever EngineConfig.capture says: they are built uncaptured and captured
  by a background pass (background_graphs.py), the same machinery as capture="background": between
  steps, back to back while the engine is idle, at most a quarter of its time under load, and appended
  to the start-up pass if that one still runs. No step stalls for them. Until a rung lands, a structured
  step of that size still takes the overlapped path (forward, wait, masks, masked sampling), its halves
  eager inside their runners (counted as `capturing` fallbacks), then replays; the tokens are the same
  either way (the rungs are verified against eager before they replace it).
- tensor parallel: synchronously, at that step, on every rank (capture_now): the background pass paces
  itself by each rank's clock, which would split the ranks' capture verdicts (the reason EngineConfig
  refuses capture="background" there); a step triggered on every rank by the same batch keeps them in
  lockstep. That step stalls for the capture, said once at INFO with what was captured and how long.

Why not capture them synchronously on one rank too: the first structured request would stall every
running request for a whole capture (three kinds over the ladder, seconds on a GPU); the background pass
costs the structured steps eager speed for a while instead, and nothing to anyone else.
Why at the first step and not when the request is added: add_request runs outside the step on rank 0
only (the other ranks hear of it at their next step), and a step is where the ranks agree; the request's
prefill (eager for grammar rows) comes first anyway, so its decode steps lose nothing.
"""

from __future__ import annotations

import logging

import torch
from prometheus_client import CollectorRegistry

from graphrun.graphs.options import CaptureWhen
from graphrun.llm.background_graphs import BackgroundGraphs
from graphrun.llm.decode_graph import DecodeGraphs
from graphrun.llm.graph_state import release_runner_names

log = logging.getLogger("graphrun.llm.engine")


def runner_names() -> tuple[str, ...]:
    """The runner names the structured kinds take (graph_state publishes their zero series till then)."""
    return tuple(f"decode-{kind}" for kind in DecodeGraphs.STRUCTURED_KINDS)


def capture_in_background(
    graphs: DecodeGraphs,
    registry: CollectorRegistry,
    last_tokens: torch.Tensor,
    background: BackgroundGraphs | None,
) -> BackgroundGraphs:
    """Build the structured kinds uncaptured and queue them on `background` if it still runs, else on a
    pass of their own; returns the pass that now captures them."""
    release_runner_names(registry, runner_names())
    runners = graphs.add_structured(CaptureWhen.LATER)
    sizes = len(runners[0].sizes) if runners else 0
    log.info(
        "graphs: first structured step: %d kinds x %d sizes (%s) to capture in the background, between "
        "steps; structured steps run them eager until then", len(runners), sizes, ", ".join(runner_names()),
    )  # fmt: skip
    if background is not None and background.pending:
        background.extend(runners)
        return background
    return BackgroundGraphs(runners, last_tokens, None, what="structured decode graphs")


@torch.inference_mode()
def capture_now(graphs: DecodeGraphs, registry: CollectorRegistry, last_tokens: torch.Tensor) -> None:
    """Build and capture the structured kinds now (DecodeGraphs.add_structured logs what and how long).

    `last_tokens` holds the step in flight's tokens, the next step's feed: capture's warm-up and
    verification samples overwrite its front rows, so it is put back after (the K/V they write go to the
    scratch block only: decode_graph.random_inputs)."""
    release_runner_names(registry, runner_names())
    saved = last_tokens.clone()
    try:
        graphs.add_structured(CaptureWhen.NOW)
    finally:
        last_tokens.copy_(saved)
