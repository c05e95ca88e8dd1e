"""What the control-plane tests run on every rank (spawned by tp_ranks.run_ranks): each rank reports
its own value and saves what the collective answered, or the error it raised, as out/rank{r}.pt."""

from __future__ import annotations

from pathlib import Path

import torch

from graphrun.llm.parallel.control import RankDivergence, check_same_batch, min_across_ranks
from graphrun.llm.parallel.group import ParallelGroup


def fewest_blocks(group: ParallelGroup, out: Path, counts: list[int]) -> None:
    """Rank r holds counts[r] blocks; every rank saves the count all agree on."""
    assert group.process_group is not None
    fewest = min_across_ranks(group.process_group, counts[group.rank])
    torch.save(fewest, out / f"rank{group.rank}.pt")


def compare(group: ParallelGroup, out: Path, fingerprints: list[int]) -> None:
    """Rank r schedules a batch of fingerprint fingerprints[r] at step 7; every rank saves the error."""
    assert group.process_group is not None
    try:
        check_same_batch(group.process_group, 7, fingerprints[group.rank])
        error = None
    except RankDivergence as exc:
        error = str(exc)
    torch.save(error, out / f"rank{group.rank}.pt")
