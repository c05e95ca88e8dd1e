import pytest
import torch

from graphrun.graphs.pytree import StructureMismatch, describe, spec_of


def test_round_trip_nested_structure():
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    obj = ((a, {"x": b, "y": [c, 5]}), {"k": None})
    spec = spec_of(obj)
    leaves = spec.flatten(obj)
    assert leaves[0] is a and leaves[1] is b and leaves[2] is c and leaves[3] == 5 and leaves[4] is None
    assert spec.num_leaves == 5
    rebuilt = spec.unflatten(list(leaves))
    assert rebuilt[0][1]["y"][1] == 5 and rebuilt[1] == {"k": None}
    assert type(rebuilt[0][1]["y"]) is list


@pytest.mark.parametrize(
    "other",
    [
        ((torch.zeros(1),), {}),  # shorter tuple
        ((torch.zeros(1), [torch.zeros(1)]), {}),  # list instead of dict
        ((torch.zeros(1), {"z": torch.zeros(1)}), {}),  # other key
    ],
)
def test_flatten_rejects_other_structures(other):
    spec = spec_of(((torch.zeros(1), {"x": torch.zeros(1)}), {}))
    with pytest.raises((StructureMismatch, KeyError)):
        spec.flatten(other)


def test_single_leaf_and_describe():
    spec = spec_of((torch.zeros(2, 3),))
    assert len(spec.flatten((torch.ones(1),))) == 1
    assert "Tensor(2, 3):float32" in describe((torch.zeros(2, 3),))
    assert spec.describe() == "(leaf)"
