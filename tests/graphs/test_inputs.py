"""Bad input gets a clear exception naming the argument and what was expected."""

import pytest
import torch

from graphrun import GraphInputError, GraphRunner
from graphrun.errors import ConfigError


@pytest.fixture
def runner(registry):
    def fn(x, mask):
        return x * mask

    return GraphRunner(
        fn,
        (torch.randn(4, 3), torch.ones(3)),
        batch_dims=(0, None),
        sizes=[2, 4],
        backend="sim",
        registry=registry,
    )


def test_wrong_dtype(runner):
    with pytest.raises(GraphInputError, match=r"args\[0\]: expected dtype torch.float32, got torch.float16"):
        runner(torch.randn(2, 3).half(), torch.ones(3))


def test_wrong_device(runner):
    meta = torch.empty(2, 3, device="meta")
    with pytest.raises(GraphInputError, match=r"args\[0\]: expected a tensor on cpu, got one on meta"):
        runner(meta, torch.ones(3))


def test_non_batched_dimension_differs(runner):
    with pytest.raises(GraphInputError, match=r"args\[0\]: non-batched dimensions must equal the captured 3"):
        runner(torch.randn(2, 5), torch.ones(3))


def test_shared_input_shape_differs(runner):
    with pytest.raises(GraphInputError, match=r"args\[1\]: shape \(this input is not batched\)"):
        runner(torch.randn(2, 3), torch.ones(4))


def test_batch_of_zero(runner):
    with pytest.raises(GraphInputError, match="batch size is 0"):
        runner(torch.randn(0, 3), torch.ones(3))


def test_other_structure(runner):
    with pytest.raises(GraphInputError, match=r"structure .*the runner was built for"):
        runner(torch.randn(2, 3))
    with pytest.raises(GraphInputError, match=r"args\[1\]: expected a Tensor, got list"):
        runner(torch.randn(2, 3), [torch.ones(3)])
    with pytest.raises(GraphInputError, match="structure"):
        runner(torch.randn(2, 3), torch.ones(3), extra=1)


def test_not_a_tensor(runner):
    with pytest.raises(GraphInputError, match=r"args\[0\]: expected a Tensor, got list"):
        runner([[1.0, 2.0, 3.0]], torch.ones(3))


def test_wrong_number_of_dimensions(runner):
    with pytest.raises(GraphInputError, match=r"args\[0\]: expected 2 dimensions"):
        runner(torch.randn(2, 3, 1), torch.ones(3))


def test_config_errors(registry):
    with pytest.raises(ConfigError, match="no tensor input has a batch dimension"):
        GraphRunner(lambda x: x, (torch.randn(2),), batch_dims=None, backend="sim", registry=registry)
    with pytest.raises(ConfigError, match="scalars"):
        GraphRunner(lambda x: x, (torch.randn(2),), scalars="dynamic", backend="sim", registry=registry)
    with pytest.raises(ConfigError, match="backend"):
        GraphRunner(lambda x: x, (torch.randn(2),), backend="tpu", registry=registry)
    with pytest.raises(ConfigError, match="batch dimension 3"):
        GraphRunner(lambda x: x, (torch.randn(2),), batch_dims=3, backend="sim", registry=registry)
    with pytest.raises(ConfigError, match="max_batch_size=8 disagrees"):
        GraphRunner(
            lambda x: x, (torch.randn(2),), sizes=[4], max_batch_size=8, backend="sim", registry=registry
        )


def test_cuda_backend_without_cuda_is_a_clear_error(registry):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    from graphrun.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="backend='sim'"):
        GraphRunner(lambda x: x, (torch.randn(2),), backend="cuda", registry=registry)
