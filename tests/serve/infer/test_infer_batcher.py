"""The batcher's policy: full or due buckets are ready; FIFO up to the top rung; oversized alone."""

from __future__ import annotations

from graphrun.serve.infer.batcher import Batcher, Pending
from graphrun.serve.infer.schema import BucketKey

ONE = BucketKey()


def _ids(batch) -> list[int]:
    return [request.request_id for request in batch.requests]


def test_a_bucket_waits_until_its_oldest_request_is_due():
    batcher = Batcher(max_rows=8, max_wait=0.002)
    batcher.add(Pending(0, 1, ONE, arrival=10.0))
    batcher.add(Pending(1, 2, ONE, arrival=10.001))
    assert not batcher.ready(10.0015) and batcher.take(10.0015) is None
    assert abs(batcher.wait_left(10.0015) - 0.0005) < 1e-9
    batch = batcher.take(10.002)
    assert _ids(batch) == [0, 1] and batch.rows == 3 and len(batcher) == 0
    assert batcher.wait_left(10.002) is None


def test_a_full_bucket_is_ready_at_once():
    batcher = Batcher(max_rows=4, max_wait=60.0)
    for i in range(3):
        batcher.add(Pending(i, 2, ONE, arrival=0.0))
    assert batcher.ready(0.0)
    assert _ids(batcher.take(0.0)) == [0, 1]  # 4 rows: the third would not fit
    assert not batcher.ready(0.0) and len(batcher) == 1


def test_no_wait_takes_what_is_queued_now():
    batcher = Batcher(max_rows=8, max_wait=0.0)
    batcher.add(Pending(0, 1, ONE, arrival=5.0))
    batcher.add(Pending(1, 1, ONE, arrival=5.0))
    assert _ids(batcher.take(5.0)) == [0, 1]


def test_an_oversized_request_goes_alone_and_is_not_passed_by_smaller_ones():
    batcher = Batcher(max_rows=4, max_wait=0.0)
    batcher.add(Pending(0, 1, ONE, arrival=0.0))
    batcher.add(Pending(1, 9, ONE, arrival=0.0))
    batcher.add(Pending(2, 1, ONE, arrival=0.0))
    assert _ids(batcher.take(0.0)) == [0]  # FIFO stops at the first that does not fit
    assert _ids(batcher.take(0.0)) == [1]
    assert _ids(batcher.take(0.0)) == [2]


def test_buckets_never_share_a_batch_and_the_longest_waiting_goes_first():
    batcher = Batcher(max_rows=8, max_wait=0.0)
    short, long = BucketKey((16,)), BucketKey((64,))
    batcher.add(Pending(0, 1, long, arrival=1.0))
    batcher.add(Pending(1, 1, short, arrival=2.0))
    batcher.add(Pending(2, 1, long, arrival=3.0))
    first = batcher.take(3.0)
    assert first.key == long and _ids(first) == [0, 2]
    assert _ids(batcher.take(3.0)) == [1]


def test_removed_and_drained_requests_are_gone():
    batcher = Batcher(max_rows=8, max_wait=0.0)
    for i in range(3):
        batcher.add(Pending(i, 1, ONE, arrival=0.0))
    assert batcher.remove(1) and not batcher.remove(1)
    assert [p.request_id for p in batcher.drain()] == [0, 2]
    assert len(batcher) == 0 and batcher.take(0.0) is None


def test_max_requests_caps_a_batch_and_makes_a_bucket_ready_once_reached():
    batcher = Batcher(max_rows=32, max_wait=60.0, max_requests=2)
    batcher.add(Pending(0, 1, ONE, arrival=0.0))
    assert not batcher.ready(0.0)  # one request of two: it waits for its deadline
    for i in (1, 2):
        batcher.add(Pending(i, 1, ONE, arrival=0.0))
    assert batcher.ready(0.0)
    assert _ids(batcher.take(0.0)) == [0, 1]
    assert not batcher.ready(0.0) and _ids(batcher.take(60.0)) == [2]


def test_one_request_a_batch_never_coalesces_and_never_waits():
    batcher = Batcher(max_rows=32, max_wait=60.0, max_requests=1)
    for i in range(4):
        batcher.add(Pending(i, 1, ONE, arrival=0.0))
    assert [_ids(batcher.take(0.0)) for _ in range(4)] == [[0], [1], [2], [3]]
    assert batcher.take(0.0) is None
