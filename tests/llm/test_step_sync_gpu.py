"""A mixed step's launch queues its GPU work without waiting for it (needs CUDA).

With async scheduling the host builds step n+1 while the GPU runs step n; one synchronizing copy in the
launch (a tensor built from a list straight onto the device is a copy from pageable memory, which waits
for the stream) makes host and GPU work take turns. torch's sync debug mode raises on any such sync
inside the launch of a mixed step through the piecewise graphs: metadata, forward, sampling.
"""

import pytest
import torch
from engine_runs import tiny_cuda_engine

from graphrun.llm.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu


def test_a_mixed_step_launches_without_a_host_sync():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    eng = tiny_cuda_engine(0.3)  # full_and_piecewise: a mixed step replays the piecewise graphs
    assert eng.piecewise_graphs is not None
    params = SamplingParams(temperature=0.8, seed=5, max_tokens=40, ignore_eos=True)
    eng.add_request(list(range(3, 40)), params)
    eng.step()  # its prefill: it decodes from now on
    eng.step()
    eng.add_request(list(range(7, 90)), params)  # rides along the decode steps in 4-token chunks
    batch = eng.scheduler.schedule()
    assert batch is not None and batch.kind == "mixed" and eng._takes_piecewise(batch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():  # as engine.step() runs it
            tokens = eng._run_decode(batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert tokens.shape[0] == len(batch.sample_rows)
