"""A bucketed runner's status: per bucket, its runner's rungs and the dims it may not be padded along."""

from __future__ import annotations

from dataclasses import dataclass

from graphrun.graphs.status import RunnerStatus, text_table


@dataclass(frozen=True, slots=True)
class BucketStatus:
    """One bucket: its rung per dim, the dims it replays exact sizes along only (and why), its runner."""

    sizes: tuple[int, ...]
    exact_dims: tuple[str, ...]
    detail: str
    runner: RunnerStatus

    @property
    def num_captured(self) -> int:
        """Batch rungs of this bucket captured."""
        return sum(r.captured for r in self.runner)


@dataclass(frozen=True, slots=True)
class BucketedStatus:
    """Every bucket of one BucketedRunner; str() is a table, one line per bucket."""

    runner: str
    dims: tuple[str, ...]
    batch_ladder: tuple[int, ...]
    buckets: tuple[BucketStatus, ...]

    def __str__(self) -> str:
        head = (
            f"bucketed runner {self.runner}: {len(self.buckets)} buckets over {', '.join(self.dims)} "
            f"x batch {list(self.batch_ladder)}"
        )
        rows = [
            (
                ", ".join(f"{d}={s}" for d, s in zip(self.dims, b.sizes, strict=True)),
                f"{b.num_captured}/{len(b.runner)}",
                "no: " + ", ".join(b.exact_dims) if b.exact_dims else "yes",
                b.detail,
            )
            for b in self.buckets
        ]
        return head + "\n" + text_table(("bucket", "batch rungs captured", "padded", "note"), rows, "lrll")
