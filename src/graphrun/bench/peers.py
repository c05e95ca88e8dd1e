"""Peers for `bench decode --peers`: Hugging Face transformers decoding on graphrun's own weights.

The peer is transformers' Qwen3ForCausalLM or LlamaForCausalLM built from the same ModelConfig, its weights
copied out of graphrun's model (fused qkv and gate_up split back: the inverse of llm/weights.py), so both
sides do the same arithmetic on the same numbers. Per-step decode latency is what generate() adds per token
beyond the first: (time of k new tokens - time of 1) / (k - 1), medians of a few runs, for
  hf_eager:   generate with the default dynamic cache, no compilation;
  hf_compile: generate(cache_implementation="static") with model.forward = torch.compile(model.forward)
              (mode default, fullgraph False). transformers' own auto-compile (reduce-overhead) is turned
              off, so this is exactly that recipe. Every shape is warmed first with the same calls as the
              timed ones: compilation happens on first use and again when a shape (batch size, cache
              length) changes; the first warm-up round's extra time is reported as compile seconds.
Every failure is caught and reported as a string: a peer never stops the benchmark.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import torch
from torch import nn

from graphrun.bench.timing import release_memory
from graphrun.llm.config import ModelConfig
from graphrun.llm.models.decoder import DecoderLM

log = logging.getLogger(__name__)

PEER_MODES = ("hf_eager", "hf_compile")
REPS = 3  # timed rounds (1 token, k tokens) per point
PARITY_TOKENS = 8  # greedy tokens compared with graphrun's at batch 1
MIN_RECOMPILE_LIMIT = 64  # every batch size recompiles prefill and decode; dynamo's default (8) runs out
PromptsFor = Callable[[int], list[list[int]]]


def hf_config(config: ModelConfig) -> Any:
    """The transformers config of the same architecture; no bos/eos/pad, so generate never stops early."""
    import transformers

    cls = transformers.Qwen3Config if config.architecture == "Qwen3ForCausalLM" else transformers.LlamaConfig
    return cls(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters={
            "rope_type": "default",
            **(config.rope_scaling or {}),
            "rope_theta": config.rope_theta,
        },
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
        attention_bias=config.attention_bias,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def hf_state_dict(model: DecoderLM) -> dict[str, torch.Tensor]:
    """graphrun's parameters under transformers' names: qkv_proj and gate_up_proj split into row views."""
    config = model.config
    q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():  # a tied head is listed under both of its names
        hf_name = name if name.startswith("lm_head.") else f"model.{name}"
        prefix, _, kind = hf_name.rpartition(".")  # kind: "weight" or "bias"
        if prefix.endswith("qkv_proj"):
            base = prefix.removesuffix("qkv_proj")
            parts = tensor.split([q_size, kv_size, kv_size])  # rows: [q | k | v]
            out.update({f"{base}{p}_proj.{kind}": t for p, t in zip("qkv", parts, strict=True)})
        elif prefix.endswith("gate_up_proj"):
            base = prefix.removesuffix("gate_up_proj")
            gate, up = tensor.chunk(2)  # rows: [gate | up]
            out.update({f"{base}gate_proj.{kind}": gate, f"{base}up_proj.{kind}": up})
        else:
            out[hf_name] = tensor
    return out


def build_hf_model(model: DecoderLM, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    """A transformers causal LM holding a copy of `model`'s weights, in eval mode on `device`.

    Built like from_pretrained builds (default dtype set during init), so rotary frequencies stay float32.
    """
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(hf_config(model.config), dtype=dtype)
    hf.load_state_dict(hf_state_dict(model), strict=True)
    hf.eval().requires_grad_(False)
    return hf


def try_build_hf_model(model: DecoderLM, dtype: torch.dtype, device: torch.device | str) -> Any:
    """build_hf_model, or the error it raised as a string (run_peers reports it; nothing is raised)."""
    try:
        return build_hf_model(model, dtype, device)
    except ImportError as exc:
        return f"the peers need transformers ({_error(exc)}): pip install 'graphrun[bench]'"
    except Exception as exc:
        return f"building the transformers model failed: {_error(exc)}"


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generate(hf: Any, ids: torch.Tensor, new_tokens: int, extra: dict[str, Any]) -> torch.Tensor:
    """Greedy generate of exactly `new_tokens` tokens: (batch, prompt) -> (batch, prompt + new_tokens)."""
    out: torch.Tensor = hf.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        **extra,
    )
    if out.shape[1] != ids.shape[1] + new_tokens:
        raise RuntimeError(f"generate returned {out.shape[1] - ids.shape[1]} tokens, asked {new_tokens}")
    return out


def _round(hf: Any, ids: torch.Tensor, k: int, extra: dict[str, Any]) -> tuple[float, float]:
    """Wall seconds of generate with 1 new token, then with k (device synced around each)."""
    times = []
    for new_tokens in (1, k):
        _sync(ids.device)
        start = time.perf_counter()
        _generate(hf, ids, new_tokens, extra)
        _sync(ids.device)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def measure_point(
    hf: Any, ids: torch.Tensor, k: int, warmup_rounds: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """Per-step ms of one batch, (median t_k - median t_1) / (k - 1); first warm-up round's extra seconds."""
    warm = [_round(hf, ids, k, extra) for _ in range(warmup_rounds)]
    timed = [_round(hf, ids, k, extra) for _ in range(REPS)]
    t1 = statistics.median(t for t, _ in timed)
    tk = statistics.median(t for _, t in timed)
    return {
        "batch": ids.shape[0],
        "per_step_ms": (tk - t1) / (k - 1) * 1e3,
        "generate_1_s": t1,
        "generate_k_s": tk,
        "first_round_extra_s": sum(warm[0]) - (t1 + tk) if warm else None,
    }


def _points(
    hf: Any, prompts_for: PromptsFor, batch_sizes: Sequence[int], k: int, warmup: int, extra: dict[str, Any]
) -> list[dict[str, Any]]:
    """One guarded measurement per batch size: a failure becomes that point's error string."""
    device = next(hf.parameters()).device
    points = []
    for batch in batch_sizes:
        log.info("decode bench peers: transformers %s, batch %d", "compiled" if extra else "eager", batch)
        try:
            ids = torch.tensor(prompts_for(batch), dtype=torch.int64, device=device)
            points.append(measure_point(hf, ids, k, warmup, extra))
        except Exception as exc:
            log.warning("peer at batch %d failed: %s", batch, _error(exc))
            points.append({"batch": batch, "per_step_ms": None, "error": _error(exc)})
        release_memory()
    return points


def _compile_mode(hf: Any, prompts_for: PromptsFor, batch_sizes: Sequence[int], k: int) -> dict[str, Any]:
    """Static cache + torch.compile(model.forward); dynamo's recompile limit raised for the duration."""
    dynamo_config: Any = torch._dynamo.config
    limit_name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    old_limit = getattr(dynamo_config, limit_name)
    setattr(dynamo_config, limit_name, max(old_limit, MIN_RECOMPILE_LIMIT))
    eager_forward, stats = hf.forward, torch._dynamo.utils.counters["stats"]
    graphs_before = stats["unique_graphs"]
    try:
        hf.forward = torch.compile(eager_forward)
        extra = {"cache_implementation": "static", "disable_compile": True}
        points = _points(hf, prompts_for, batch_sizes, k, 2, extra)
    finally:
        hf.forward = eager_forward
        setattr(dynamo_config, limit_name, old_limit)
    extras = [p["first_round_extra_s"] for p in points if p.get("first_round_extra_s") is not None]
    return {
        "label": "static cache + torch.compile",
        "compile_seconds": sum(extras),
        "dynamo_graphs": stats["unique_graphs"] - graphs_before,  # 0 would mean nothing was compiled
        "points": points,
    }


def greedy_parity(hf: Any, prompt: list[int], graphrun_tokens: list[int]) -> dict[str, Any]:
    """How many of graphrun's first greedy tokens transformers' eager generate reproduces (reported only)."""
    num = min(PARITY_TOKENS, len(graphrun_tokens))
    ids = torch.tensor([prompt], dtype=torch.int64, device=next(hf.parameters()).device)
    theirs = _generate(hf, ids, num, {})[0, len(prompt) :].tolist()
    ours = graphrun_tokens[:num]
    leading = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), num)
    return {"num_checked": num, "num_leading_agree": leading, "graphrun": ours, "transformers": theirs}


def run_peers(
    hf: Any,
    prompts_for: PromptsFor,
    batch_sizes: Sequence[int],
    new_tokens: int,
    graphrun_tokens: list[int],
    modes: Sequence[str] = PEER_MODES,
) -> dict[str, Any]:
    """Every peer mode at every batch size, plus greedy parity at batch 1; errors reported, never raised.

    `hf` is the model from build_hf_model, or the error string its construction raised.
    """
    result: dict[str, Any] = {
        "transformers": _version("transformers"),
        "new_tokens": new_tokens,
        "reps": REPS,
    }
    if isinstance(hf, str):
        return {**result, "error": hf, "modes": {}}
    result.update(error=None, modes={}, attn_implementation=getattr(hf.config, "_attn_implementation", None))
    if "hf_eager" in modes:
        points = _points(hf, prompts_for, batch_sizes, new_tokens, 1, {})
        result["modes"]["hf_eager"] = {"label": "eager, dynamic cache", "points": points}
    try:
        result["greedy_parity"] = greedy_parity(hf, prompts_for(1)[0], graphrun_tokens)
    except Exception as exc:
        result["greedy_parity"] = {"error": _error(exc)}
    if "hf_compile" in modes:
        try:
            result["modes"]["hf_compile"] = _compile_mode(hf, prompts_for, batch_sizes, new_tokens)
        except Exception as exc:
            result["modes"]["hf_compile"] = {"error": _error(exc), "points": []}
    return result
