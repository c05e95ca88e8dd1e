"""`graphrun bench decode --profile`: kernel classes by name, per-class floors, summary, CPU refusal."""

import pytest
import torch
from test_decode_bench import tiny_setup

from graphrun.bench.decode_profile import (
    Kernel,
    KernelClass,
    class_floor_bytes,
    classify_name,
    classify_step,
    print_profile,
    profile_summary,
)
from graphrun.cli import main
from graphrun.errors import ConfigError
from graphrun.llm.presets import preset_config

P, H, A, N, R, S, C, OTHER = (
    KernelClass.PROJECTION,
    KernelClass.LM_HEAD,
    KernelClass.ATTENTION,
    KernelClass.NORM,
    KernelClass.ROTARY_CACHE,
    KernelClass.SAMPLING,
    KernelClass.COPY,
    KernelClass.OTHER,
)
# names as the profiler reports them: Triton keeps the Python function's name, cuBLAS/CUTLASS their own
NAMES = {
    "_gemv_kernel": P,
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64_warpgroupsize1x1x1_execute_segment_k_off_"
    "kernel__5x_cublas": P,
    "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>("
    "cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8::Params)": P,
    "void gemv2T_kernel_val<int, int, __nv_bfloat16, __nv_bfloat16, float, 128, 16, 4, 4, false, false, "
    "cublasGemvParamsEx<int, cublasGemvTensorStridedBatched<__nv_bfloat16 const>, "
    "cublasGemvTensorStridedBatched<__nv_bfloat16>, float> >(...)": P,
    "nvjet_tst_128x8_64x12_4x1_v_bz_TNT": P,
    "void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16, true, "
    "false, false>(cublasLt::cublasSplitKParams<float>, float const*, __nv_bfloat16 const*, ...)": P,
    "_skinny_matmul_kernel": H,
    "_paged_decode_split_kernel": A,
    "_paged_decode_merge_kernel": A,
    "_add_rmsnorm_kernel": N,
    "_qk_norm_rope_write_kernel": R,  # a norm too, but rotary + cache write is what sets it apart
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>, "
    "unsigned int, long, 4, 4> >(at::native::ReduceOp<float, at::native::ArgMaxOps<float>, unsigned int, "
    "long, 4, 4>)": S,
    "Memcpy DtoD (Device -> Device)": C,
    "Memset (Device)": C,
    "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<long>, std::array<char*, "
    "1ul> >(int, at::native::FillFunctor<long>, std::array<char*, 1ul>)": C,
    "_silu_mul_kernel": OTHER,
    "void at::native::index_elementwise_kernel<128, 4, at::native::gpu_index_kernel<...> >(long, ...)": OTHER,
}


@pytest.mark.parametrize("name", list(NAMES))
def test_kernel_names_fall_into_their_class(name):
    assert classify_name(name) is NAMES[name]


GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64_cublas"
SPLIT_K = "void cublasLt::splitKreduce_kernel<32, 16, int, float>(...)"
ARGMAX = "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>>>"
LAYER = [GEMM, "_qk_norm_rope_write_kernel", "_paged_decode_split_kernel", "_paged_decode_merge_kernel"]
LAYER += [GEMM, "_add_rmsnorm_kernel", GEMM, "_silu_mul_kernel", GEMM, "_add_rmsnorm_kernel"]


def test_a_cublas_lm_head_is_the_steps_last_run_of_products():
    step = ["index_elementwise_kernel", "_add_rmsnorm_kernel", *LAYER, *LAYER, GEMM, SPLIT_K, ARGMAX]
    classes = classify_step(step)
    assert classes[-3:] == [H, H, S]  # the LM head's GEMM and its split-K reduce
    assert classes.count(H) == 2 and classes.count(P) == 8  # 4 products in each of 2 layers


def test_a_named_lm_head_leaves_the_projections_alone():
    step = [*LAYER, "_gemv_kernel", "_skinny_matmul_kernel", ARGMAX]
    assert classify_step(step)[-3:] == [P, H, S]
    assert classify_step(["_silu_mul_kernel", ARGMAX]) == [OTHER, S]  # no products: nothing to relabel


def test_tiny_preset_class_floors_match_a_hand_count():
    floors = class_floor_bytes(preset_config("tiny"), batch=3, context=17, itemsize=2)
    # tiny: hidden 64, 4 heads and 2 KV heads of 16, intermediate 128, 2 layers, vocab 512
    qkv, o, mlp = 64 * (64 + 2 * 32), 64 * 64, 3 * 64 * 128
    assert floors[P] == 2 * (qkv + o + mlp) * 2 == 147456
    assert floors[H] == 512 * 64 * 2 == 65536
    assert floors[A] == 3 * 17 * 2 * (2 * 2 * 16) * 2 == 13056  # seqs * tokens * layers * (K,V heads) * bytes
    assert set(floors) == {P, H, A}  # norms, rotary, sampling, copies have no floor of their own


def _replays(durations: list[tuple[str, float]], replays: int) -> list[Kernel]:
    kernels, t = [], 0.0
    for _ in range(replays):
        for name, us in durations:
            kernels.append(Kernel(name, t, us))
            t += us + 1.0  # a 1 us gap after each kernel
    return kernels[::-1]  # the profiler's order is not launch order: the summary sorts by start


def test_summary_counts_times_and_divides_by_the_floor():
    step = [("_gemv_kernel", 6.0), ("_paged_decode_split_kernel", 3.0), ("_gemv_kernel", 4.0)]
    step += [("_add_rmsnorm_kernel", 1.0), ("_skinny_matmul_kernel", 5.0), (ARGMAX, 1.0)]
    floors = {P: 5e3, H: 2e3, A: 1e3}  # bytes
    summary = profile_summary(_replays(step, 4), 4, floors, bandwidth=1e9)  # 1 byte/ns: floor us = KB
    assert summary["kernels_per_step"] == 6 and summary["replays"] == 4
    assert summary["device_ms_per_step"] == pytest.approx(20e-3)
    assert summary["span_ms_per_step"] == pytest.approx(25e-3)  # 20 us busy + 5 gaps of 1 us
    rows = {r["class"]: r for r in summary["classes"]}
    assert set(rows) == {"projection", "attention", "norm", "lm_head", "sampling"}
    assert rows["projection"]["kernels_per_step"] == 2
    assert rows["projection"]["ms_per_step"] == pytest.approx(0.01)
    assert rows["projection"]["floor_ms"] == pytest.approx(5e-3) and rows["projection"]["over_floor"] == 2.0
    assert rows["lm_head"]["over_floor"] == pytest.approx(2.5) and rows["attention"]["over_floor"] == 3.0
    assert rows["norm"]["floor_ms"] is None and rows["norm"]["over_floor"] is None
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
    assert summary["kernels"][0] == {
        "name": "_gemv_kernel",
        "class": "projection",
        "per_step": 2,
        "ms_per_step": pytest.approx(0.01),
    }


def test_a_kernel_count_that_differs_between_replays_is_an_error():
    kernels = [*_replays([("_gemv_kernel", 1.0)], 3), Kernel("Memset (Device)", 99.0, 1.0)]
    with pytest.raises(ValueError, match="4 device kernels over 3 replays"):
        profile_summary(kernels, 3, {}, 1e9)
    with pytest.raises(ValueError, match="0 device kernels"):
        profile_summary([], 3, {}, 1e9)


def test_the_table_has_a_row_per_batch_and_class_and_names_failures(capsys):
    step = [("_gemv_kernel", 2.0), ("_add_rmsnorm_kernel", 1.0), ("_gemv_kernel", 2.0), (ARGMAX, 1.0)]
    point = profile_summary(_replays(step, 2), 2, {P: 1e3}, 1e9)
    print_profile([{"batch": 4, "context": 513, **point}, {"batch": 64, "context": 513, "error": "boom"}])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[3:7]]  # after the title, the header and its rule
    assert [(r[0], r[1]) for r in rows] == [("4", c) for c in ("projection", "lm_head", "norm", "sampling")]
    assert "profile b4 (context 513): 4 kernels per step, 0.006 ms busy" in lines[7]
    assert "profile b64 failed: boom" in lines[8]


def test_profile_is_refused_without_cuda_and_without_full_graphs(tmp_path):
    with pytest.raises(ConfigError, match="--profile needs CUDA"):
        tiny_setup(tmp_path, profile=True)
    with pytest.raises(ConfigError, match="FULL decode graph"):
        tiny_setup(tmp_path, profile=True, device="cuda", cuda_graph_mode="piecewise")
    assert tiny_setup(tmp_path, profile=True, device="cuda").profile  # full graphs on CUDA: accepted


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_cli_refuses_profile_on_a_machine_without_cuda(tmp_path, capsys):
    assert main(["bench", "decode", "--profile", "--out", str(tmp_path)]) == 2
    assert "--profile needs CUDA" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything ran or was written


@pytest.mark.gpu
def test_profile_of_the_graphed_tiny_step_on_cuda(tmp_path):
    """Graph-replayed kernels reach the profiler, every one classed once, each floored class floored."""
    from graphrun.bench.decode import run_decode_bench

    payload = run_decode_bench(tiny_setup(tmp_path, device="cuda", dtype="bfloat16", profile=True))
    assert payload["ok"], payload["error"]
    points = payload["profile"]["points"]
    assert [p["batch"] for p in points] == [1, 2] and all("error" not in p for p in points)
    for point in points:
        rows = {r["class"]: r for r in point["classes"]}
        assert {"projection", "lm_head", "attention", "sampling"} <= set(rows)
        assert sum(r["kernels_per_step"] for r in rows.values()) == point["kernels_per_step"] > 10
        assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
        assert all(rows[c]["over_floor"] > 0 for c in ("projection", "lm_head", "attention"))
        assert point["span_ms_per_step"] >= point["device_ms_per_step"] > 0
