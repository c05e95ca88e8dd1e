"""Dynamic batching: queued requests coalesce per bucket into one batch of up to the top rung's rows.

Policy. Requests queue per bucket (schema.BucketKey: each declared dim's rung, by bucket_of), in
arrival order. A bucket is ready when its rows reach the top rung (waiting longer cannot make a larger
replay) or when its oldest request has waited `max_wait` seconds (0: at once, no coalescing beyond what
arrived together). `take` picks the ready bucket whose oldest request is oldest and takes requests
first-in first-out while their rows fit the top rung; it stops at the first that does not fit rather
than skipping it, so a large request is never starved by small ones behind it. A request larger than
the top rung is taken alone (the served model splits it into top-rung chunks). `max_requests` caps the
requests of one batch (1: no coalescing); a bucket holding that many is ready at once. Pure Python, no
clock of its own: the caller passes `now` (time.monotonic, the clock of the requests' arrival times).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from graphrun.serve.infer.schema import BucketKey


@dataclass(frozen=True, slots=True)
class Pending:
    """A queued request: its id, its batch rows, its bucket and when it arrived (time.monotonic)."""

    request_id: int
    rows: int
    key: BucketKey
    arrival: float


@dataclass(frozen=True, slots=True)
class Batch:
    """Requests of one bucket that run as one padded call (or one oversized request, alone)."""

    key: BucketKey
    requests: tuple[Pending, ...]

    @property
    def rows(self) -> int:
        return sum(request.rows for request in self.requests)


class Batcher:
    """Per-bucket FIFO queues; max_rows is the top rung, max_wait in seconds, max_requests per batch
    (None: no cap but the rows)."""

    def __init__(self, max_rows: int, max_wait: float, max_requests: int | None = None) -> None:
        assert max_rows >= 1 and max_wait >= 0, (max_rows, max_wait)
        assert max_requests is None or max_requests >= 1, max_requests
        self.max_rows, self.max_wait, self.max_requests = max_rows, max_wait, max_requests
        self._queues: dict[BucketKey, deque[Pending]] = {}

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def add(self, request: Pending) -> None:
        self._queues.setdefault(request.key, deque()).append(request)

    def remove(self, request_id: int) -> bool:
        """Drop a queued request (aborted); False when it is not queued."""
        for key, queue in self._queues.items():
            for request in queue:
                if request.request_id == request_id:
                    queue.remove(request)
                    if not queue:
                        del self._queues[key]
                    return True
        return False

    def ready(self, now: float) -> bool:
        """Some bucket is full or has waited long enough."""
        return any(self._ready(queue, now) for queue in self._queues.values())

    def wait_left(self, now: float) -> float | None:
        """Seconds until the next bucket is due (0: one is ready), None with nothing queued."""
        if not self._queues:
            return None
        if self.ready(now):
            return 0.0
        oldest = min(queue[0].arrival for queue in self._queues.values())
        return max(0.0, oldest + self.max_wait - now)

    def take(self, now: float) -> Batch | None:
        """The next batch of the ready bucket that has waited longest, or None when none is ready."""
        ready = [(queue[0].arrival, key) for key, queue in self._queues.items() if self._ready(queue, now)]
        if not ready:
            return None
        _, key = min(ready, key=lambda pair: pair[0])
        queue = self._queues[key]
        taken = [queue.popleft()]
        rows = taken[0].rows
        while queue and rows + queue[0].rows <= self.max_rows and not self._full(len(taken)):
            rows += queue[0].rows
            taken.append(queue.popleft())
        if not queue:
            del self._queues[key]
        return Batch(key, tuple(taken))

    def drain(self) -> list[Pending]:
        """Every queued request, removed."""
        requests = [request for queue in self._queues.values() for request in queue]
        self._queues.clear()
        return requests

    def _ready(self, queue: deque[Pending], now: float) -> bool:
        if now - queue[0].arrival >= self.max_wait or self._full(len(queue)):
            return True
        return sum(request.rows for request in queue) >= self.max_rows

    def _full(self, num_requests: int) -> bool:
        return self.max_requests is not None and num_requests >= self.max_requests
