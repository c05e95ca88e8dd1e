"""What the engine runs on and what each of its graph runners captured, printable as tables.

One frozen object, built on request by LLMEngine.status(): the facts a person asks first (model, device,
KV cache, whether decode replays graphs and, if not, why) and every runner's per-size status.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphrun.graphs.status import RunnerStatus, text_table


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """The engine's start-up facts and each graph runner's status; str() is one table per part."""

    model: str
    device: str
    dtype: str
    num_kv_blocks: int
    block_size: int
    graphs_off: str | None  # why decode runs eager; None when graphs are on
    runners: tuple[RunnerStatus, ...] = ()

    def __str__(self) -> str:
        graphs = f"off ({self.graphs_off})" if self.graphs_off is not None else f"{len(self.runners)} runners"
        pending = sum(r.num_pending for r in self.runners)
        if pending:
            total = pending + sum(len(r) for r in self.runners)
            graphs += f", capturing in the background ({total - pending}/{total} sizes done)"
        facts = [
            ("model", self.model),
            ("device", f"{self.device} ({self.dtype})"),
            ("KV cache", f"{self.num_kv_blocks} blocks of {self.block_size} tokens"),
            ("graphs", graphs),
        ]
        parts = [text_table(("engine", ""), facts)]
        parts.extend(str(runner) for runner in self.runners)
        return "\n\n".join(parts)
