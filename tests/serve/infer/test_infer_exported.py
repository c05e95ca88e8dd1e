"""`graphrun serve --exported` with dynamic dims besides the batch: found in the export, rungs from
--dim-rungs or the export's bound, served in buckets with the mask (sim graphs), answers == eager."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from infer_harness import served_app
from infer_models import VOCAB, TinyEncoder

from graphrun.errors import ConfigError
from graphrun.serve.infer.config import InferConfig
from graphrun.serve.infer.exported import load_exported

CPU = torch.device("cpu")
RUNGS = (("input_ids", 1, (4, 8, 16)),)


def _export_encoder(path: Path, max_length: int | None = 16, tie_mask: bool = True) -> Path:
    """TinyEncoder exported with a dynamic batch and a length bounded by its position table; with no
    max_length, a model with no table and an unbounded length; tie_mask=False: each input its own length."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    length = torch.export.Dim("length", min=1, max=max_length) if max_length else torch.export.Dim("length")
    other = length if tie_mask else torch.export.Dim("other", min=1, max=max_length)
    ids = torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    model = TinyEncoder() if max_length and tie_mask else _Sums()
    shapes = ({0: batch, 1: length}, {0: batch, 1: other})
    program = torch.export.export(model.eval(), (ids, torch.ones_like(ids)), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


class _Sums(torch.nn.Module):
    """Any lengths (no position table), each input's own: the export leaves them unbounded and untied."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (input_ids.sum(1, keepdim=True) + attention_mask.sum(1, keepdim=True)).float()


def test_an_exported_length_is_served_in_buckets_and_answers_as_eager(tmp_path):
    path = _export_encoder(tmp_path / "enc.pt2")
    infer = {
        "exported": path,
        "device": "cpu",
        "graph_backend": "sim",
        "cuda_graph_sizes": (1, 2, 4),
        "dim_rungs": RUNGS,
        "mask_input": "attention_mask",
    }
    with served_app(infer) as http:
        card = http.get("/v1/models").json()["data"][0]
        ids_spec = next(spec for spec in card["inputs"] if spec["name"] == "input_ids")
        assert ids_spec["axes"] == {"batch": 0, "input_ids:1": 1}, ids_spec
        for seed, (rows, length) in enumerate([(1, 3), (2, 7), (3, 16), (1, 8)]):
            gen = np.random.default_rng(seed)
            ids = gen.integers(1, VOCAB, (rows, length), dtype=np.int64)
            mask = np.ones_like(ids)
            body = {"inputs": {"input_ids": {"dtype": "int64", "data": ids.tolist()},
                               "attention_mask": {"dtype": "int64", "data": mask.tolist()}}}  # fmt: skip
            answer = http.post("/v1/infer", json=body)
            assert answer.status_code == 200, answer.text
            with torch.no_grad():
                want = TinyEncoder().eval()(torch.from_numpy(ids), torch.from_numpy(mask))
            got = answer.json()["outputs"]
            for name, tensor in want.items():
                assert got[name]["shape"] == list(tensor.shape), name
                np.testing.assert_allclose(got[name]["data"], tensor.numpy(), rtol=1e-5, atol=1e-5)
        too_long = np.ones((1, 17), np.int64).tolist()
        body = {"inputs": {"input_ids": {"dtype": "int64", "data": too_long},
                           "attention_mask": {"dtype": "int64", "data": too_long}}}  # fmt: skip
        answer = http.post("/v1/infer", json=body)
        assert answer.status_code == 400 and "input_ids:1" in answer.text, answer.text


def test_a_bounded_dim_gets_a_default_ladder_and_the_flag_overrides_it(tmp_path):
    path = _export_encoder(tmp_path / "enc.pt2")
    source = load_exported(path, CPU)
    assert [(d.name, dict(d.axes), d.ladder) for d in source.dims] == [
        ("input_ids:1", {"input_ids": 1, "attention_mask": 1}, (16,))
    ]
    assert source.mask is None
    given = load_exported(path, CPU, {("attention_mask", 1): (2, 4, 16)}, mask="attention_mask")
    assert given.dims[0].ladder == (2, 4, 16) and given.mask == "attention_mask"


def test_axes_with_their_own_dims_are_two_dims(tmp_path):
    source = load_exported(_export_encoder(tmp_path / "enc.pt2", tie_mask=False), CPU)
    assert sorted(d.name for d in source.dims) == ["attention_mask:1", "input_ids:1"]


def test_an_unbounded_dim_without_rungs_names_the_flag(tmp_path):
    path = _export_encoder(tmp_path / "unbounded.pt2", max_length=None)
    with pytest.raises(ConfigError, match=r"--dim-rungs input_ids:1=16,32,64,128"):
        load_exported(path, CPU)
    source = load_exported(path, CPU, {("input_ids", 1): (8, 32)})
    assert source.dims[0].ladder == (8, 32)


def test_bad_dim_flags_are_refused_with_what_the_export_has(tmp_path):
    path = _export_encoder(tmp_path / "enc.pt2")
    with pytest.raises(ConfigError, match=r"no such dynamic axis.*input_ids:1 \(inputs"):
        load_exported(path, CPU, {("input_ids", 2): (4,)})
    with pytest.raises(ConfigError, match=r"outside the export's range \[1, 16\]"):
        load_exported(path, CPU, {("input_ids", 1): (4, 32)})
    with pytest.raises(ConfigError, match="give one"):
        load_exported(path, CPU, {("input_ids", 1): (4,), ("attention_mask", 1): (8,)})
    with pytest.raises(ConfigError, match="--mask-input 'nope' must be an input that carries"):
        load_exported(path, CPU, mask="nope")
    with pytest.raises(ConfigError, match="describe an --exported program"):
        InferConfig(module="a:b", dim_rungs=RUNGS)
    with pytest.raises(ConfigError, match="the axis must be >= 1"):
        InferConfig(exported=path, dim_rungs=(("input_ids", 0, (4,)),))
