"""The serving benchmark's load generator against a live server: one process or several, same answers."""

from __future__ import annotations

import pytest
from serve_harness import live_server

from graphrun.bench.serve_client import default_client_processes, run_load
from graphrun.bench.serve_workload import Workload, plan_requests


def test_default_client_processes_leave_most_cpus_to_the_server():
    assert default_client_processes(16, cpus=16) == 4
    assert default_client_processes(16, cpus=2) == 1
    assert default_client_processes(3, cpus=64) == 1
    assert default_client_processes(64, cpus=64) == 16


@pytest.mark.parametrize("processes", [1, 3])
def test_every_request_completes_once_in_order_with_one_or_several_client_processes(processes):
    workload = Workload(num_requests=9, prompt_len_median=8, prompt_len_max=16, output_len_median=6,
                        output_len_max=12, seed=3)  # fmt: skip
    specs = plan_requests(workload, workload.num_requests, vocab_size=512, max_model_len=256, label="t")
    done: list[int] = []
    with live_server() as srv:
        results, wall = run_load(srv.url, "tiny", specs, 4, 60.0, processes=processes, on_done=done.append)
    assert [r.index for r in results] == [s.index for s in specs]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert [r.num_token_ids for r in results] == [s.max_tokens for s in specs]
    assert done == list(range(1, 10)) and wall > 0
    assert wall >= max(r.latency_s or 0 for r in results)
