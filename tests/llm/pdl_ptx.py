"""Compile every kernel of ours that takes USE_PDL for sm_90 with PDL on, without a GPU, and report what
its PTX does before griddepcontrol.wait (test_pdl_contract.py runs this in a process of its own: the
tests' Triton runs interpreted, and interpreted kernels cannot be compiled).

Prints one JSON object: kernel name -> {waits, launches, launch_before_wait, stores_before_wait,
pre_wait_pointers}; pre_wait_pointers names the pointer arguments whose memory a global load reads
before the wait, found by following each register back to the kernel parameters it was computed from
(the code before the wait is straight-line: no kernel of ours waits inside a loop).
"""

from __future__ import annotations

import json
import re
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from graphrun.llm.kernels import gemv, logprobs, sampling, triton_ops

TARGET = GPUTarget("cuda", 90, 32)
BF16, F32, I32, I64 = "*bf16", "*fp32", "*i32", "*i64"
REGISTER = re.compile(r"%[a-z]+\d+")
PARAM = re.compile(r"_param_(\d+)")
STORE = re.compile(r"^(st\.global|atom\.|red\.)")

S32 = "i32"
GEMV_ARGS = dict(
    x_ptr=BF16, w_ptr=BF16, out_ptr=BF16, N=S32, stride_xm=S32, stride_wn=S32, stride_om=S32, UP_OFFSET=S32,
    res_ptr=BF16, norm_w_ptr=BF16, res_out_ptr=BF16, stride_rm=S32, eps="fp32",
)  # fmt: skip
STRIDES = dict.fromkeys(
    ("stride_qs", "stride_qh", "stride_kb", "stride_kt", "stride_kh", "stride_ts", "stride_os", "stride_oh"),
    S32,
)
SPLIT_ARGS = dict(
    q_ptr=BF16, k_ptr=BF16, v_ptr=BF16, tables_ptr=I32, lens_ptr=I32, m_ptr=F32, l_ptr=F32, acc_ptr=F32,
    out_ptr=BF16, scale="fp32", **STRIDES, NUM_SPLITS=S32, ITERS=S32, pos_ptr=I64,
    cos_ptr=F32, sin_ptr=F32, qw_ptr=BF16, kw_ptr=BF16, slot_ptr=I64, eps="fp32", stride_pos=S32,
    stride_slot=S32,
)  # fmt: skip
MERGE_ARGS = dict(
    m_ptr=F32, l_ptr=F32, acc_ptr=F32, out_ptr=BF16, stride_os=S32, stride_oh=S32, NUM_SPLITS=S32
)
VARLEN_ARGS = dict(
    q_ptr=BF16, k_ptr=BF16, v_ptr=BF16, out_ptr=BF16, tables_ptr=I32, lens_ptr=I32, qstart_ptr=I32,
    tiles_ptr=I32, scale="fp32", **STRIDES,
)  # fmt: skip
NORM_ARGS = dict(
    x_ptr=BF16, res_ptr=BF16, w_ptr=BF16, out_ptr=BF16, res_out_ptr=BF16, eps="fp32", N=S32, stride_x=S32,
    stride_r=S32,
)  # fmt: skip
ROPE_ARGS = dict(
    qkv_ptr=BF16, pos_ptr=I64, cos_ptr=F32, sin_ptr=F32, qw_ptr=BF16, kw_ptr=BF16, slot_ptr=I64,
    q_out_ptr=BF16, k_cache_ptr=BF16, v_cache_ptr=BF16, eps="fp32", stride_t=S32, stride_qo_t=S32,
    stride_qo_h=S32, stride_slot=S32, stride_pos=S32,
)  # fmt: skip
SILU_ARGS = dict(x_ptr=BF16, out_ptr=BF16, N=S32, stride_x=S32)
SKINNY_ARGS = dict(
    x_ptr=BF16, w_ptr=BF16, out_ptr=F32, M=S32, N=S32, stride_xm=S32, stride_wn=S32, stride_om=S32
)
LP_MERGE_ARGS = dict(
    logits_ptr=F32, tokens_ptr=I64, max_ptr=F32, sum_ptr=F32, keys_ptr=I64, values_ptr=F32, ids_ptr=I64,
    index_ptr=I64, stride_row=S32, stride_values=S32, stride_ids=S32, num_chunks=S32, num_sets=S32, k=S32,
)  # fmt: skip
LP_STATS_ARGS = dict(logits_ptr=F32, max_ptr=F32, sum_ptr=F32, vocab=S32, stride_row=S32, num_chunks=S32)
LP_SELECT_ARGS = dict(
    logits_ptr=F32, max_ptr=F32, keys_ptr=I64, vocab=S32, stride_row=S32, num_chunks=S32, num_sets=S32, k=S32
)
PARAMS = dict(temperature_ptr=F32, top_k_ptr="*i32", top_p_ptr=F32, seeds_ptr=I64, positions_ptr=I64)
PARAM_STRIDES = dict.fromkeys(("stride_t", "stride_k", "stride_p", "stride_s", "stride_pos"), S32)
SAMPLE_SPLIT_ARGS = dict(
    logits_ptr=F32, **PARAMS, best_pv_ptr=F32, best_key_ptr=I64, max_ptr=F32, sum_ptr=F32, keys_ptr=I64,
    vocab=S32, stride_row=S32, **PARAM_STRIDES, num_chunks=S32,
)  # fmt: skip
SAMPLE_FINISH_ARGS = dict(
    logits_ptr=F32, **PARAMS, best_pv_ptr=F32, best_key_ptr=I64, max_ptr=F32, sum_ptr=F32, keys_ptr=I64,
    list_ptr=I64, out_ptr=I64, vocab=S32, stride_row=S32, **PARAM_STRIDES, num_chunks=S32,
)  # fmt: skip
ATTENTION = dict(HEAD_DIM=128, BLOCK_SIZE=16, TOKENS=64)
Spec = tuple[Any, dict, dict, dict]  # (kernel, runtime argument types, constexpr values, compile options)


def _gemv(block_n: int, block_k: int, silu: bool, norm: bool) -> Spec:
    constants = dict(K=1024, M=1, M_PAD=1, BLOCK_N=block_n, BLOCK_K=block_k, SILU_MUL=silu, NORM=norm,
                     HAS_RESIDUAL=norm)  # fmt: skip
    return gemv._gemv_kernel, GEMV_ARGS, constants, {"num_warps": 4}


def kernels() -> dict[str, Spec]:
    """Every kernel that takes USE_PDL, at qwen3-0.6b-shape decode sizes."""
    ops = triton_ops
    return {
        "gemv": _gemv(4, 512, silu=False, norm=False),
        "gemv_silu_mul": _gemv(2, 512, silu=True, norm=False),
        "norm_gemv_silu_mul": _gemv(2, 512, silu=True, norm=True),
        "paged_decode_split": (
            ops._paged_decode_split_kernel, SPLIT_ARGS,
            dict(NUM_HEADS=16, NUM_KV_HEADS=8, GROUP=2, GROUP_PAD=16, ROPE=False, HAS_NORM=False,
                 **ATTENTION), {},
        ),
        "paged_decode_split_rope": (
            ops._paged_decode_split_kernel, SPLIT_ARGS,
            dict(NUM_HEADS=16, NUM_KV_HEADS=8, GROUP=2, GROUP_PAD=16, ROPE=True, HAS_NORM=True,
                 **ATTENTION), {},
        ),
        "paged_decode_merge": (
            ops._paged_decode_merge_kernel, MERGE_ARGS, dict(NUM_HEADS=16, SPLITS_PAD=32, HEAD_DIM=128), {}
        ),
        "paged_varlen": (
            ops._paged_varlen_kernel, VARLEN_ARGS,
            dict(GROUP=2, HEADS_PER=2, PARTS=1, BLOCK_Q=32, **ATTENTION), {},
        ),
        "add_rmsnorm": (ops._add_rmsnorm_kernel, NORM_ARGS, dict(HAS_RESIDUAL=True, BLOCK=1024), {}),
        "qk_norm_rope_write": (
            ops._qk_norm_rope_write_kernel, ROPE_ARGS,
            dict(NUM_HEADS=16, NUM_KV_HEADS=8, HEAD_DIM=128, HAS_NORM=True), {},
        ),
        "silu_mul": (ops._silu_mul_kernel, SILU_ARGS, dict(BLOCK=1024), {}),
        "skinny_logits": (
            ops._skinny_matmul_kernel, SKINNY_ARGS, dict(K=1024, BLOCK_M=16, BLOCK_N=64, BLOCK_K=256),
            {"num_warps": 4, "num_stages": 4},
        ),
        "logprobs_stats": (logprobs._logprobs_stats_kernel, LP_STATS_ARGS, dict(BLOCK=1024), {}),
        "logprobs_select": (
            logprobs._logprobs_select_kernel, LP_SELECT_ARGS, dict(BLOCK=1024, K_PAD=32, CHUNKS_PAD=256), {}
        ),
        "logprobs_merge": (
            logprobs._logprobs_merge_kernel, LP_MERGE_ARGS,
            dict(K_PAD=32, CHUNKS_PAD=256, SETS_PAD=32, HAS_INDEX=True), {"num_warps": 8},
        ),
        "sample_split": (
            sampling._sample_split_kernel, SAMPLE_SPLIT_ARGS, dict(BLOCK=4096, K_PAD=64, PRECISE=True),
            {"num_warps": 8},
        ),
        "sample_finish": (
            sampling._sample_finish_kernel, SAMPLE_FINISH_ARGS,
            dict(K_PAD=64, CHUNKS_PAD=64, TILE=4096, PRECISE=True), {"num_warps": 8},
        ),
    }  # fmt: skip


def compile_ptx(kernel: Any, args: dict, constants: dict, options: dict) -> str:
    """The kernel's PTX for sm_90 with USE_PDL set and launched with launch_pdl."""
    constants = {**constants, "USE_PDL": True}
    signature = {**args, **dict.fromkeys(constants, "constexpr")}
    values = {(kernel.arg_names.index(name),): value for name, value in constants.items()}
    compiled = triton.compile(ASTSource(kernel, signature, values), target=TARGET,
                              options={**options, "launch_pdl": True})  # fmt: skip
    return str(compiled.asm["ptx"])


def instructions(ptx: str) -> list[str]:
    """The kernel body's instructions in order, comments, labels and directives left out."""
    body = ptx[ptx.index("{", ptx.index(".entry")) :]
    lines = (line.split("//")[0].strip() for line in body.splitlines())
    return [line.rstrip(";").strip() for line in lines if line.endswith(";") and not line.startswith(".")]


def _split(instruction: str) -> tuple[str, str]:
    """(opcode, operands) with any guard predicate (@%p1, @!%p2) dropped."""
    text = re.sub(r"^@!?%p\d+\s+", "", instruction)
    opcode, _, operands = text.partition(" ")
    return opcode, operands.strip()


def _destinations(operands: str) -> list[str]:
    head = operands[: operands.index("}") + 1] if operands.startswith("{") else operands.split(",")[0]
    return REGISTER.findall(head)


def analyse(ptx: str, arg_names: list[str], pointer_args: set[str]) -> dict[str, Any]:
    """What the PTX does before its griddepcontrol.wait (see the module docstring)."""
    body = instructions(ptx)
    ops = [_split(line)[0] for line in body]
    waits = [i for i, op in enumerate(ops) if op == "griddepcontrol.wait"]
    launches = [i for i, op in enumerate(ops) if op == "griddepcontrol.launch_dependents"]
    first_wait = waits[0] if waits else len(body)
    taint: dict[str, set[str]] = {}
    pre_wait_pointers: set[str] = set()
    stores = 0
    for line in body[:first_wait]:
        opcode, operands = _split(line)
        if STORE.match(opcode):
            stores += 1
            continue
        sources = {name for reg in REGISTER.findall(operands) for name in taint.get(reg, ())}
        sources |= {arg_names[int(i)] for i in PARAM.findall(operands) if int(i) < len(arg_names)}
        if opcode.startswith("ld.global"):
            address = operands[operands.index("[") :]
            read = {name for reg in REGISTER.findall(address) for name in taint.get(reg, ())}
            pre_wait_pointers |= read & pointer_args
        for reg in _destinations(operands):
            taint[reg] = sources
    return {
        "waits": len(waits),
        "launches": len(launches),
        "launch_before_wait": bool(launches) and launches[0] < first_wait,
        "stores_before_wait": stores,
        "pre_wait_pointers": sorted(pre_wait_pointers),
    }


def main() -> None:
    report = {}
    for name, (kernel, args, constants, options) in kernels().items():
        runtime = [a for a in kernel.arg_names if a not in constants and a != "USE_PDL"]
        pointers = {a for a, kind in args.items() if kind.startswith("*")}
        report[name] = analyse(compile_ptx(kernel, args, constants, options), runtime, pointers)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
