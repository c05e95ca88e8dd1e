"""The engine's background capture: one graph rung at a time, between steps, on the engine thread.

With EngineConfig.capture="background" start-up ends once the KV cache is allocated, and the runners are
built uncaptured. This pass then captures their rungs in order (decode-sampling, decode-greedy,
decode-logprobs, prefill, piecewise; each largest first): back to back while the engine is idle (one per
turn of the serving loop, so a request that arrives waits for one rung at most), and under load at most
BUSY_CAPTURE_SHARE of the engine's time, one rung after a step once the steps since the last rung have
taken (1 - share) / share times as long as it did. A rung costs several forward passes (warm-up,
capture, verification at its own size and padded), a few times a decode step, so capturing one after
every step would slow every running request several-fold until the pass ends; this way they run at eager
speed less a quarter, and the pass still ends under constant load.

The structured decode kinds (decode-structured, decode-mask-greedy, decode-mask-sampling) are built at
the first structured step, whatever EngineConfig.capture says, and captured by such a pass too: a pass of
their own, or appended to the start-up pass while it runs (extend(); structured_graphs.py says why).

Why on the engine thread and not on a thread of its own: the decode and prefill callables write the KV
cache and `last_tokens`, which the running sequences own, so a capture beside a step would race with it.
Between steps nothing else runs, and three rules keep capture off a running sequence's state:
- decode capture writes K/V only into the scratch block (decode_graph.random_inputs), and each rung is
  captured on the example inputs, not on the rows a live step left in the static buffers (runner.py);
- prefill capture writes K/V only into blocks reserved for it (BlockManager.reserve), given back to the
  sequences when the last rung lands;
- `last_tokens` (the in-flight step's tokens, the next step's feed) is saved before each rung and put back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from graphrun.graphs import GraphRunner
from graphrun.llm.block_manager import BlockManager

log = logging.getLogger("graphrun.llm.engine")

BUSY_CAPTURE_SHARE = 0.25  # under load, the share of the engine's time a background capture may take


class BackgroundGraphs:
    """Drives one background capture pass over `runners`, in order; step() captures the next rung."""

    def __init__(
        self,
        runners: Sequence[GraphRunner],
        last_tokens: torch.Tensor,
        blocks: BlockManager | None,
        what: str = "graphs",
    ) -> None:
        """blocks: the manager whose reserve()d blocks `runners` capture into, given back once they are
        done (None: none held, as for decode kinds alone, which write only the scratch block)."""
        self._queue: list[GraphRunner] = []
        self._last_tokens = last_tokens
        self._blocks = blocks
        self._holding = list(runners) if blocks is not None else []  # the runners the blocks wait for
        self._what = what  # the pass's name in its closing log line
        self.extend(runners)
        self._start = time.perf_counter()
        self._next_busy = self._start  # under load, no rung before this time (perf_counter)

    def extend(self, runners: Sequence[GraphRunner]) -> None:
        """Queue more runners (built uncaptured, writing no reserved block) after those queued; their calls
        run eager until their rungs land."""
        for runner in runners:
            runner.start_background_capture(thread=False)
        self._queue += runners

    @property
    def pending(self) -> bool:
        """Whether any rung is left to capture."""
        return bool(self._queue)

    def step_if_due(self) -> bool:
        """Under load: capture the next rung if the capture's share of the time allows it now."""
        if not self._queue or time.perf_counter() < self._next_busy:
            return False
        return self.step()

    def step(self) -> bool:
        """Capture the next pending rung; False when none was left."""
        while self._queue:
            runner = self._queue[0]
            saved = self._last_tokens.clone()
            start = time.perf_counter()
            try:
                captured = runner.capture_step()
            finally:
                self._last_tokens.copy_(saved)
            end = time.perf_counter()
            self._next_busy = end + (end - start) * (1 - BUSY_CAPTURE_SHARE) / BUSY_CAPTURE_SHARE
            if captured:
                self._after_rung()
                return True
            self._queue.pop(0)
        return False

    def _after_rung(self) -> None:
        """Give the reserved blocks back once their runners are done; end the pass once every one is."""
        if self._blocks is not None and not any(r.pending_rungs for r in self._holding):
            self._blocks.release_reserved()
            self._blocks, self._holding = None, []
            log.info("graphs: reserved KV blocks released")
        if not any(r.pending_rungs for r in self._queue):
            self._queue = []
            log.info("%s: background capture done in %.2f s", self._what, time.perf_counter() - self._start)
