"""`graphrun ladder`: from a JSON histogram, from a saved metrics text, and from a live /metrics URL
served by a local http.server with the metrics of real runners that took real calls."""

from __future__ import annotations

import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest

from graphrun.cli import main
from graphrun.errors import ConfigError
from graphrun.graphs import BucketDim, BucketedRunner, BucketOptions, GraphRunner
from graphrun.graphs.options import RunnerOptions
from graphrun.ladder_source import from_metrics_text

sys.path.insert(0, str(Path(__file__).parent / "graphs"))
from bucket_models import TinyEncoder, encoder_inputs


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["ladder", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_from_json_file_table_and_json(tmp_path, capsys):
    path = tmp_path / "sizes.json"
    path.write_text(json.dumps({"4": 10, "16": 10, "64": 10, "3": 1}))
    assert main(["ladder", "--from-json", str(path), "--max-graphs", "3", "--current", "batch=8,64"]) == 0
    table = capsys.readouterr().out
    assert "recommended       3  4,16,64" in table
    report = run_json(capsys, "--from-json", str(path), "--max-graphs", "3", "--current", "8,64")
    (dim,) = report["dims"]
    assert dim["recommended"] == [4, 16, 64] and dim["current"] == [8, 64]
    assert dim["padding_ratio"]["recommended"] < dim["padding_ratio"]["current"]


def test_from_json_two_dims(tmp_path, capsys):
    path = tmp_path / "sizes.json"
    path.write_text(json.dumps({"batch": {"1": 50, "4": 10}, "length": {"12": 30, "100": 3}}))
    report = run_json(capsys, "--from-json", str(path), "--max-graphs", "4")
    assert report["graphs"]["recommended"] <= 4
    assert {d["dim"] for d in report["dims"]} == {"batch", "length"}
    assert [d["recommended"] for d in report["dims"]] == [[1, 4], [12, 100]]


def test_bad_input_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text("[1, 2]")
    assert main(["ladder", "--from-json", str(path)]) == 2
    assert "graphrun ladder: error:" in capsys.readouterr().err
    assert main(["ladder", "--from-metrics", "ftp://x/metrics"]) == 2
    assert main(["ladder", "--from-json", str(path), "--current", "batch=a"]) == 2


def graph_runner_metrics(sizes: tuple[int, ...]) -> str:
    registry = CollectorRegistry()
    runner = GraphRunner(lambda x: x * 2, (torch.randn(2, 3),), backend="sim", registry=registry,
                         sizes=(1, 2, 4, 8), name="mlp")  # fmt: skip
    for n in sizes:
        runner(torch.randn(n, 3))
    return generate_latest(registry).decode()


def test_from_saved_metrics_text():
    traffic = from_metrics_text(graph_runner_metrics((3, 3, 3, 5, 9)))
    assert traffic.runner == "mlp"
    assert traffic.histograms == {"batch": {3: 3, 5: 1}}
    assert traffic.unknown == {"batch": 1}  # 9 is above the top rung: its size was not kept
    with pytest.raises(ConfigError, match="no histogram for runner 'other'"):
        from_metrics_text(graph_runner_metrics((1,)), runner="other")


@pytest.fixture
def serve_text() -> Iterator[tuple[list[str], str]]:
    """A local http.server answering /metrics with whatever text the test puts in the list."""
    page: list[str] = [""]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = page[0].encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield page, f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_from_metrics_url_graph_runner(serve_text, capsys):
    page, url = serve_text
    page[0] = graph_runner_metrics((3, 3, 3, 3, 6, 6, 1))
    report = run_json(capsys, "--from-metrics", url, "--max-graphs", "2")
    assert report["runner"] == "mlp"
    (dim,) = report["dims"]
    assert dim["recommended"] == [3, 6]
    assert dim["current"] == [1, 2, 4, 6]  # graphrun's default ladder up to the largest size seen
    assert main(["ladder", "--from-metrics", url.replace("/metrics", "/nothing")]) == 2


def test_from_metrics_url_bucketed_runner_advises_per_dim(serve_text, capsys, registry):
    model = TinyEncoder().eval().requires_grad_(False)
    dim = BucketDim("length", {"input_ids": 1, "attention_mask": 1}, (4, 8, 16))
    runner_options = RunnerOptions(sizes=(1, 2, 4), backend="sim", registry=registry)
    runner = BucketedRunner(model, encoder_inputs(2, 8), BucketOptions((dim,), "attention_mask",
                            runner=runner_options, name="enc"))  # fmt: skip
    for batch, length in ((1, 3), (1, 3), (1, 3), (2, 11), (1, 11)):
        runner(**encoder_inputs(batch, length))
    page, url = serve_text
    page[0] = generate_latest(registry).decode()
    report = run_json(capsys, "--from-metrics", url, "--max-graphs", "2", "--current", "length=4,8,16")
    assert report["runner"] == "enc"  # the bucketed runner, not its per-bucket runners
    dims = {d["dim"]: d for d in report["dims"]}
    assert dims["length"]["current"] == [4, 8, 16]
    assert dims["length"]["recommended"] == [3, 11]
    assert dims["batch"]["recommended"] == [2]
