"""RungTable: which captured rung serves each batch size, and why a batch without one runs eager."""

from graphrun.graphs.rung_table import RungTable
from graphrun.graphs.spec import CaptureResult
from graphrun.graphs.status import CallFallback, CaptureFailure, RungStatus, RunnerStats

SIZES = (1, 2, 4, 8)


class Recorded:
    """A captured graph as the table sees it: bytes, replay, release (which it notes)."""

    def __init__(self) -> None:
        self.nbytes = 1024
        self.released = False

    def replay(self) -> None:
        pass

    def release(self) -> None:
        self.released = True


def captured(size: int, padded: bool = True) -> RungStatus:
    reason = None if padded else CaptureFailure.PADDING_MISMATCH
    return RungStatus(size, True, 1024, 0.5, reason, "" if padded else "rows coupled", padded)


def table_with(statuses: dict[int, RungStatus], stats: RunnerStats | None = None) -> RungTable:
    table = RungTable(SIZES, None)
    graphs = {size: Recorded() for size, status in statuses.items() if status.captured}
    table.install(CaptureResult(graphs, statuses, None), stats or RunnerStats())
    table.captured_once = True
    table.rebuild(())
    return table


def test_a_batch_takes_its_own_rung_else_the_smallest_padded_one_above():
    oom = RungStatus(2, False, reason=CaptureFailure.OOM, detail="out of memory")
    table = table_with({1: captured(1), 2: oom, 4: captured(4, padded=False), 8: captured(8)})
    assert [table.rung_for(n) for n in range(1, 9)] == [1, 8, 8, 4, 8, 8, 8, 8]
    assert table.rung_for(0) is None and table.rung_for(9) is None


def test_why_a_batch_runs_eager():
    eager8 = RungStatus(8, False, reason=CaptureFailure.OOM, detail="out of memory")
    table = table_with({4: captured(4, padded=False), 8: eager8})
    assert table.rung_for(3) is None and table.why_eager(3) is CallFallback.PADDING_MISMATCH
    assert table.why_eager(5) is CallFallback.RUNG_NOT_CAPTURED
    assert table.why_eager(9) is CallFallback.ABOVE_TOP_RUNG
    table.rebuild((8,))  # a background pass has rung 8 still to capture
    assert table.why_eager(5) is CallFallback.CAPTURING
    forbid = table_with({4: RungStatus(4, True, 1024, 0.5, padded=False)})
    assert forbid.why_eager(3) is CallFallback.PADDING_FORBIDDEN
    fresh = RungTable(SIZES, None)
    fresh.rebuild(())
    assert fresh.why_eager(1) is CallFallback.NOT_CAPTURED_YET


def test_a_runner_without_graphs_says_why_for_every_batch():
    stats = RunnerStats()
    table = RungTable(SIZES, (CaptureFailure.MODE_NONE, "mode none: graphs are off"))
    table.mark_all_eager(stats, "t")
    table.captured_once = True
    table.rebuild(())
    assert all(table.why_eager(n) is CallFallback.MODE_NONE for n in range(1, 9))
    assert stats.capture_failed == {CaptureFailure.MODE_NONE: 4}
    assert [s.size for s in table.rung_statuses()] == list(SIZES)


def test_install_counts_and_release_keeps_the_statuses():
    stats = RunnerStats()
    table = table_with({1: captured(1), 8: captured(8, padded=False)}, stats)
    assert stats.num_captured == 2 and stats.capture_seconds == 1.0
    assert stats.capture_failed == {CaptureFailure.PADDING_MISMATCH: 1}
    graphs = list(table.graphs.values())
    table.release()
    assert all(g.released for g in graphs) and not table.graphs
    assert [s.size for s in table.rung_statuses()] == [1, 8]
    table.rebuild(())
    assert table.rung_for(1) is None
    table.reset()
    assert table.rung_statuses() == ()
