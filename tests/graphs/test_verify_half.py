"""Half-precision outputs: rounding differences of a deep network pass, a row that moved does not."""

import torch

from graphrun.graphs.verify import mismatch


def _hidden(rows: int = 8, width: int = 256) -> torch.Tensor:
    return (torch.randn(rows, width, generator=torch.Generator().manual_seed(0)) * 2).to(torch.bfloat16)


def test_a_few_elements_off_by_several_ulps_pass_in_bfloat16():
    want = _hidden()
    got = want.clone()
    got[3, 17] += 0.0625  # 4-8 units in the last place at magnitude 1-2: other GEMM tiles, not coupling
    got[5, 200] -= 0.0859
    assert mismatch(got.float(), want.float()) is not None  # elementwise it fails in float32 terms...
    assert mismatch(got, want) is None  # ...but each bf16 row is within 2% in norm


def test_a_row_that_moved_fails_and_says_so():
    want = _hidden()
    got = want.clone()
    got[2] += 0.1 * want[2].abs().max()  # padding rows leaking into a real row move all of it
    problem = mismatch(got, want)
    assert problem is not None and "relative error" in problem


def test_an_explicit_tolerance_is_elementwise_only_and_nans_must_agree():
    want = _hidden()
    got = want.clone()
    got[3, 17] += 0.0625
    assert mismatch(got, want, tolerance=(2e-2, 1e-2)) is not None
    nan = want.clone()
    nan[0, 0] = float("nan")
    assert mismatch(nan, want) is not None
