"""`graphrun serve --onnx`: an exported torch module served at /v1/infer through OrtRunner, in process and
from the CLI in its own process; answers equal the torch module; bad inputs 400; start-up refusals.

CPU onnxruntime: the runner runs eager (no CUDA EP), which /health and /v1/models name ("ort-eager").
Tolerance against torch: rtol 1e-5, atol 1e-6 (float32, the same CPU math in another library).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="graphrun[onnx] is not installed")
pytest.importorskip("onnxscript", reason="graphrun[onnx] is not installed")

from fastapi.testclient import TestClient
from infer_harness import configs, served_app

from graphrun.bench.serve_process import free_port
from graphrun.errors import ConfigError
from graphrun.ort import export_onnx
from graphrun.ort.sessions import has_cuda_ep
from graphrun.serve.infer import cli as infer_cli
from graphrun.serve.infer.app import build_infer_app
from graphrun.serve.infer.config import InferConfig
from graphrun.serve.infer.model import InferServedModel, infer_client
from graphrun.serve.infer.onnx_calls import ort_options

RTOL, ATOL = 1e-5, 1e-6
PATIENCE = 180.0
needs_cpu_ort = pytest.mark.skipif(has_cuda_ep(), reason="onnxruntime here has the CUDA EP")


class Mixer(torch.nn.Module):
    """(x: (b, 4) float32, ids: (b, 3) int64) -> (mixed (b, 5), doubled (b, 4)); rows independent."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 5)
        self.embed = torch.nn.Embedding(10, 5)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.linear(x)) + self.embed(ids).sum(1), x * 2


@pytest.fixture(scope="module")
def mixer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Mixer, Path]:
    torch.manual_seed(0)
    module = Mixer().eval()
    path = tmp_path_factory.mktemp("onnx_serve") / "mixer.onnx"
    example = (torch.randn(2, 4), torch.randint(0, 10, (2, 3)))
    export_onnx(module, example, path, input_names=["x", "ids"], output_names=["mixed", "doubled"])
    return module, path


def _inputs(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    return generator.standard_normal((rows, 4)).astype(np.float32), generator.integers(0, 10, (rows, 3))


def _body(x: np.ndarray, ids: np.ndarray) -> dict:
    return {
        "inputs": {
            "x": {"dtype": str(x.dtype), "data": x.tolist()},
            "ids": {"dtype": str(ids.dtype), "data": ids.tolist()},
        }
    }


def _check(module: Mixer, x: np.ndarray, ids: np.ndarray, outputs: dict) -> None:
    with torch.no_grad():
        mixed, doubled = module(torch.from_numpy(x), torch.from_numpy(ids))
    np.testing.assert_allclose(outputs["mixed"]["data"], mixed.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(outputs["doubled"]["data"], doubled.numpy(), rtol=RTOL, atol=ATOL)
    assert outputs["mixed"]["dtype"] == "float32"


@pytest.fixture(scope="module")
def onnx_server(mixer):
    with served_app({"onnx": mixer[1], "device": "cpu", "cuda_graph_max_bs": 4}) as http:
        yield http


@pytest.mark.parametrize("rows", [1, 3, 4, 9])  # 9: above the top rung 4, three chunks
def test_answers_equal_the_torch_module(mixer, onnx_server, rows):
    x, ids = _inputs(rows, seed=rows)
    answer = onnx_server.post("/v1/infer", json=_body(x, ids))
    assert answer.status_code == 200, answer.text
    _check(mixer[0], x, ids, answer.json()["outputs"])


@needs_cpu_ort
def test_models_and_health_name_the_graph_inputs_and_the_backend(mixer, onnx_server):
    card = onnx_server.get("/v1/models").json()["data"][0]
    assert [(s["name"], s["dtype"], s["shape"]) for s in card["inputs"]] == [
        ("x", "float32", [None, 4]),
        ("ids", "int64", [None, 3]),
    ]
    outputs = [(s["name"], s["shape"]) for s in card["outputs"]]
    assert outputs == [("mixed", [None, 5]), ("doubled", [None, 4])]
    assert card["rungs"] == [1, 2, 4] and card["root"] == str(mixer[1])
    assert card["graph_backend"] == "ort-eager"  # the CPU onnxruntime has no CUDA EP
    health = onnx_server.get("/health").json()
    assert health["graph_backend"] == "ort-eager" and health["graphs"] == "off"


@pytest.mark.parametrize(
    ("change", "param", "code"),
    [
        (lambda b: b["inputs"].pop("ids"), "ids", "missing"),
        (lambda b: b["inputs"].update(y={"dtype": "float32", "data": [[1.0]]}), "y", "unknown_name"),
        (lambda b: b["inputs"]["x"].update(dtype="float64"), "x", "dtype"),
        (lambda b: b["inputs"]["ids"].update(data=[[1, 2], [3, 4]]), "ids", "static_dim"),
        (lambda b: b["inputs"]["x"].update(data=[1.0, 2.0, 3.0, 4.0]), "x", "rank"),
        (lambda b: b["inputs"]["ids"].update(data=[[1, 2, 3]]), "ids", "batch"),
    ],
)
def test_a_bad_input_is_a_400_naming_it(onnx_server, change, param, code):
    body = _body(*_inputs(2))
    change(body)
    answer = onnx_server.post("/v1/infer", json=body)
    assert answer.status_code == 400, answer.text
    assert (answer.json()["error"]["param"], answer.json()["error"]["code"]) == (param, code)


def test_everything_is_503_until_the_model_has_started(mixer):
    infer_config, serve_config = configs({"onnx": mixer[1], "device": "cpu"}, {"retry_after_seconds": 3})
    http = TestClient(build_infer_app(infer_client(infer_config, serve_config), serve_config))
    for answer in (http.post("/v1/infer", json=_body(*_inputs(1))), http.get("/health")):
        assert answer.status_code == 503 and answer.headers["retry-after"] == "3"


def _hand_made(path: Path, x_shape: list, y_shape: list) -> Path:
    """y = x + 1 with the declared shapes, written with onnx's helper."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "add_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("x_shape", "y_shape", "message"),
    [
        ([4, 3], [4, 3], r"input 'x' has shape \[4, 3\], whose dim 0 is not dynamic.*export_onnx"),
        (["batch", "n"], ["batch", "n"], r"input 'x' has shape \['batch', 'n'\], dynamic in dim\(s\) \[1\]"),
        (["batch", 3], [4, 3], r"output\(s\) \['y'\] have a fixed dim 0"),
    ],
)
def test_a_model_without_a_dynamic_batch_alone_is_refused_at_start_up(tmp_path, x_shape, y_shape, message):
    path = _hand_made(tmp_path / "add.onnx", x_shape, y_shape)
    with pytest.raises(ConfigError, match=message):
        InferServedModel(InferConfig(onnx=path, device="cpu", cuda_graph_max_bs=4))


def test_graph_flags_map_to_the_runner(mixer, registry):
    path = mixer[1]
    eager = ort_options(InferConfig(onnx=path, enforce_eager=True), registry)
    assert eager.backend == "eager" and eager.max_batch_size == 32
    ladder = ort_options(InferConfig(onnx=path, graph_backend="cuda", cuda_graph_sizes=(1, 4)), registry)
    assert ladder.backend == "cuda_graph" and tuple(ladder.sizes or ()) == (1, 4)
    with pytest.raises(ConfigError, match="--graph-backend sim"):
        InferConfig(onnx=path, graph_backend="sim")
    with pytest.raises(ConfigError, match="exactly one of"):
        InferConfig(onnx=path, module="a:b")


def test_enforce_eager_serves_on_an_eager_session(mixer):
    with served_app({"onnx": mixer[1], "device": "cpu", "enforce_eager": True}) as http:
        x, ids = _inputs(2)
        answer = http.post("/v1/infer", json=_body(x, ids))
        assert answer.status_code == 200
        _check(mixer[0], x, ids, answer.json()["outputs"])
        assert http.get("/v1/models").json()["data"][0]["graph_backend"] == "ort-eager"


def test_without_the_onnx_extra_the_cli_names_the_install(monkeypatch):
    real = infer_cli.importlib.util.find_spec
    monkeypatch.setattr(
        infer_cli.importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real(name)
    )
    with pytest.raises(ConfigError, match=r"pip install 'graphrun\[onnx\]'"):
        infer_cli.check_onnx_extra()


# ----- the CLI, the model in its own process ---------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "graphrun", "serve", *args]


def test_the_cli_serves_an_onnx_model_in_an_engine_process(mixer, tmp_path):
    module, path = mixer
    port, log = free_port(), tmp_path / "log"
    command = _cli("--onnx", str(path), "--device", "cpu", "--cuda-graph-sizes", "1,2", "--port", str(port))
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        health = httpx.get(url + "/health", timeout=10).json()
        assert health["engine_pid"] != proc.pid and health["model"] == "mixer", log.read_text()
        if not has_cuda_ep():
            assert health["graph_backend"] == "ort-eager"
            assert log.read_text().count("no graphs, every call runs eager") == 1  # said once
        x, ids = _inputs(3, seed=7)
        answer = httpx.post(url + "/v1/infer", json=_body(x, ids), timeout=30)
        assert answer.status_code == 200, answer.text
        _check(module, x, ids, answer.json()["outputs"])
        assert httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"] == "mixer"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(PATIENCE) == 0, log.read_text()


def test_the_cli_refuses_bad_onnx_flags_before_starting(tmp_path, mixer):
    def refused(*args: str) -> str:
        done = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=PATIENCE)
        assert done.returncode == 2, done.stderr
        return done.stderr.strip()

    assert refused("--onnx", str(tmp_path / "missing.onnx")).endswith("missing.onnx: no such file")
    assert "--graph-backend sim" in refused("--onnx", str(mixer[1]), "--graph-backend", "sim")
