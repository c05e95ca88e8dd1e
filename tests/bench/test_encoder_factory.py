"""The bench's served encoder (graphrun.bench.encoder_factory) on /v1/infer: buckets over batch x length
through the simulator, each answer equal to the encoder run eagerly on that request alone."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from graphrun.bench.encoder_factory import LENGTH_RUNGS, small_tokens
from graphrun.bench.models import masked_encoder

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))  # app_servers.py, which the harness uses
sys.path.insert(0, str(Path(__file__).parents[1] / "serve" / "infer"))
from infer_harness import served_app


def test_small_encoder_served_in_length_buckets_equals_eager_per_request():
    source = small_tokens()
    assert [dim.name for dim in source.dims] == ["length"] and source.mask == "attention_mask"
    infer = {
        "module": "graphrun.bench.encoder_factory:small_tokens",
        "graph_backend": "sim",
        "cuda_graph_sizes": (1, 2),
    }
    model = masked_encoder(small=True).eval()
    with served_app(infer) as http:
        card = http.get("/v1/models").json()["data"][0]
        for seed, (rows, length) in enumerate([(1, 5), (2, 20), (3, 16)]):
            ids = np.random.default_rng(seed).integers(1, 512, (rows, length), dtype=np.int64)
            mask = np.ones_like(ids)
            body = {"inputs": {"input_ids": {"dtype": "int64", "data": ids.tolist()},
                               "attention_mask": {"dtype": "int64", "data": mask.tolist()}}}  # fmt: skip
            answer = http.post("/v1/infer", json=body)
            assert answer.status_code == 200, answer.text
            with torch.no_grad():
                want = model(torch.from_numpy(ids), torch.from_numpy(mask))
            got = answer.json()["outputs"]
            for name in ("pooled", "hidden"):
                np.testing.assert_allclose(got[name]["data"], want[name].numpy(), rtol=1e-4, atol=1e-4)
    assert card["dynamic_dims"][1]["rungs"] == list(LENGTH_RUNGS)
    assert card["dynamic_dims"][1]["outputs"] == {"hidden": 1}
