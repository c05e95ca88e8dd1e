"""The programmatic-dependent-launch decision (kernels/pdl.py): on only for a CUDA device of compute
capability >= 9, a torch built for CUDA >= 12.3 and a compiling Triton that has the gdc ops."""

import os

import pytest
import torch

pytest.importorskip("triton")

from graphrun.llm.kernels import pdl

CUDA0 = torch.device("cuda", 0)


@pytest.fixture
def hopper(monkeypatch):
    """A CUDA device of capability 9.0 under CUDA 12.8 and a compiling Triton with the gdc ops, faked on
    any machine; each test changes one of them."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(pdl, "_interpreting", lambda: False)
    pdl._device_supports_pdl.cache_clear()
    pdl._triton_supports_pdl.cache_clear()
    yield monkeypatch
    pdl._device_supports_pdl.cache_clear()
    pdl._triton_supports_pdl.cache_clear()


def test_supported_on_a_hopper_device_and_launched_with_it(hopper):
    assert pdl.pdl_supported(CUDA0)
    assert pdl.launch_options(CUDA0) == {"USE_PDL": True, "launch_pdl": True}


def test_off_on_the_cpu(hopper):
    assert not pdl.pdl_supported(torch.device("cpu"))
    assert pdl.launch_options(torch.device("cpu")) == {"USE_PDL": False}  # no launch_pdl keyword at all


@pytest.mark.parametrize("capability", [(8, 0), (8, 9), (7, 5)])
def test_off_below_compute_capability_9(hopper, capability):
    hopper.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    assert not pdl.pdl_supported(CUDA0)


@pytest.mark.parametrize("version", ["12.2", "11.8", None])
def test_off_when_torch_is_built_for_cuda_below_12_3(hopper, version):
    hopper.setattr(torch.version, "cuda", version)
    assert not pdl.pdl_supported(CUDA0)


@pytest.mark.parametrize("op", ["gdc_wait", "gdc_launch_dependents"])
def test_off_when_triton_lacks_a_gdc_op(hopper, op):
    from triton.language.extra import cuda

    hopper.delattr(cuda, op)
    assert not pdl.pdl_supported(CUDA0)


def test_off_when_triton_lacks_the_launch_option(hopper):
    from triton.backends.nvidia.compiler import CUDAOptions

    fields = {k: v for k, v in CUDAOptions.__dataclass_fields__.items() if k != "launch_pdl"}
    hopper.setattr(CUDAOptions, "__dataclass_fields__", fields)
    assert not pdl.pdl_supported(CUDA0)


def test_off_under_the_interpreter(hopper):
    hopper.setattr(pdl, "_interpreting", lambda: True)
    assert not pdl.pdl_supported(CUDA0)


def test_interpreting_follows_tritons_own_setting():
    """tests/conftest.py runs Triton interpreted exactly where there is no CUDA."""
    assert pdl._interpreting() == (os.environ.get("TRITON_INTERPRET") == "1")


def test_the_capability_is_asked_once_per_device(hopper):
    asked = []

    def capability(index=None):
        asked.append(index)
        return (9, 0)

    hopper.setattr(torch.cuda, "get_device_capability", capability)
    for _ in range(3):
        assert pdl.pdl_supported(CUDA0) and pdl.pdl_supported(torch.device("cuda", 1))
    assert asked == [0, 1]


@pytest.mark.parametrize(
    ("text", "want"),
    [("12.8", (12, 8)), ("13.0", (13, 0)), ("12", (12, 0)), (None, (0, 0)), ("", (0, 0)), ("rocm", (0, 0))],
)
def test_cuda_version(text, want):
    assert pdl.cuda_version(text) == want
