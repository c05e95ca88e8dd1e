"""Graph modes and dispatch: each mode routes each kind of call to FULL, PIECEWISE or eager."""

import pytest

from graphrun.errors import ConfigError
from graphrun.graphs.modes import BatchDescriptor, CudaGraphMode, Dispatcher, Route, RouteKind


def ladder(*sizes):
    """A rung_for over `sizes` (smallest rung >= n, None above the top)."""
    return lambda n: next((s for s in sorted(sizes) if s >= n), None)


FULL_RUNGS = ladder(1, 2, 4, 8)  # FULL graphs up to 8 rows
PIECE_RUNGS = ladder(16, 64, 256)  # segment graphs on a token ladder up to 256


def dispatcher(mode):
    return Dispatcher(mode, FULL_RUNGS, PIECE_RUNGS)


@pytest.mark.parametrize(
    ("mode", "tokens", "uniform", "expected"),
    [
        (CudaGraphMode.NONE, 3, True, Route(RouteKind.EAGER)),
        (CudaGraphMode.FULL, 3, True, Route(RouteKind.FULL, 4)),
        (CudaGraphMode.FULL, 3, False, Route(RouteKind.EAGER)),  # mixed: no FULL graph was captured for it
        (CudaGraphMode.FULL, 9, True, Route(RouteKind.EAGER)),  # above the top FULL rung
        (CudaGraphMode.PIECEWISE, 3, True, Route(RouteKind.PIECEWISE, 16)),
        (CudaGraphMode.PIECEWISE, 300, False, Route(RouteKind.EAGER)),
        (CudaGraphMode.FULL_AND_PIECEWISE, 3, True, Route(RouteKind.FULL, 4)),
        (CudaGraphMode.FULL_AND_PIECEWISE, 3, False, Route(RouteKind.PIECEWISE, 16)),
        (CudaGraphMode.FULL_AND_PIECEWISE, 9, True, Route(RouteKind.PIECEWISE, 16)),  # above FULL's top
        (CudaGraphMode.FULL_AND_PIECEWISE, 200, False, Route(RouteKind.PIECEWISE, 256)),
        (CudaGraphMode.FULL_AND_PIECEWISE, 257, False, Route(RouteKind.EAGER)),
    ],
)
def test_each_mode_routes_each_descriptor(mode, tokens, uniform, expected):
    assert dispatcher(mode).dispatch(BatchDescriptor(tokens, uniform)) == expected


def test_a_full_rung_that_failed_to_capture_falls_to_piecewise():
    full = ladder(1, 8)  # rungs 2 and 4 failed: rung_for skips them, 3 pads to 8
    holes = Dispatcher(CudaGraphMode.FULL_AND_PIECEWISE, lambda n: None if n > 1 else full(n), PIECE_RUNGS)
    assert holes.dispatch(BatchDescriptor(1)) == Route(RouteKind.FULL, 1)
    assert holes.dispatch(BatchDescriptor(3)) == Route(RouteKind.PIECEWISE, 16)


@pytest.mark.parametrize("text", ["FULL_AND_PIECEWISE", "full-and-piecewise", " piecewise ", "None"])
def test_modes_parse_from_cli_spellings(text):
    assert CudaGraphMode.parse(text).value == text.strip().lower().replace("-", "_")


def test_a_bad_mode_names_the_valid_ones():
    with pytest.raises(ConfigError, match="full_and_piecewise"):
        CudaGraphMode.parse("fullish")


def test_a_mode_needs_the_runners_it_dispatches_to():
    with pytest.raises(ConfigError, match="no piecewise runner"):
        Dispatcher(CudaGraphMode.PIECEWISE, FULL_RUNGS, None)
    with pytest.raises(ConfigError, match="no FULL runner"):
        Dispatcher(CudaGraphMode.FULL, None, PIECE_RUNGS)
    assert Dispatcher(CudaGraphMode.NONE).dispatch(BatchDescriptor(1)).kind is RouteKind.EAGER


def test_a_descriptor_has_at_least_one_token():
    with pytest.raises(ValueError, match="num_tokens=0"):
        BatchDescriptor(0)
