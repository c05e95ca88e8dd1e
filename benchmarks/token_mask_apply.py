"""Applying structured output's token bitmasks to the logits: the (n, words, 32) expansion vs bytes.

A structured decode step masks its logits before sampling (llm/token_masks.py): one int32 word holds 32
tokens' bits. The first formulation shifted every word by 0..31 into an (n, words, 32) int32 tensor, and-ed
it with 1, cut it to the vocabulary, made it bool, negated it and filled: four bytes a token written
twice, then three one-byte passes. The shipped one reads the words as bytes, ands each with the 8 one-bit
patterns (one uint8 byte a token), makes that bool and selects. Both must give the same logits, bit for
bit (checked on random masks before timing). Timed eagerly (median of --repeats calls; on CUDA between
synchronizations, inside graphs launches cost nothing but the passes do), so on a CPU it measures the
passes' compute, not a GPU's memory traffic: the GPU run is for the lead. On a CPU the final fill or
select dominates both (torch's CPU kernel for it runs some 3.5 ns an element, 16 rows: ~8.5 of ~10 ms),
so the bytes formulation gains little there below 64 rows; on a GPU every pass is memory-bound and it
moves about 12 bytes a token against about 36.

    PYTHONPATH=src python benchmarks/token_mask_apply.py [--device cpu] [--out FILE]

Prints a table, then one JSON line (device, torch, commit).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from graphrun.bench.report import environment, headline, print_table, write_json
from graphrun.llm.token_masks import apply_token_masks, num_words

Apply = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def expand_words(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The first formulation: every word shifted into an (n, words, 32) int32 tensor."""
    n, vocab = logits.shape
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    bits = (masks[:n, :, None] >> shifts) & 1  # (n, words, 32)
    allowed = bits.reshape(n, -1)[:, :vocab].bool()
    return logits.masked_fill(~allowed, float("-inf"))


VARIANTS: dict[str, Apply] = {"expand_words": expand_words, "bytes (shipped)": apply_token_masks}


def median_ms(fn: Apply, logits: torch.Tensor, masks: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if logits.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(logits, masks)
        if logits.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(n: int, vocab: int, device: torch.device, repeats: int) -> dict[str, float | int]:
    gen = torch.Generator().manual_seed(n)
    masks = torch.randint(-(2**31), 2**31 - 1, (n, num_words(vocab)), dtype=torch.int32, generator=gen)
    logits = torch.randn(n, vocab, generator=gen)
    masks, logits = masks.to(device), logits.to(device)
    want = expand_words(logits, masks)
    row: dict[str, float | int] = {"rows": n, "vocab": vocab}
    for name, fn in VARIANTS.items():
        if not torch.equal(fn(logits, masks), want):
            raise AssertionError(f"{name} masks differently from expand_words at {n} rows")
        fn(logits, masks)  # warm-up
        row[name] = median_ms(fn, logits, masks, repeats)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--vocab", type=int, default=151936, help="qwen3's vocabulary by default")
    p.add_argument("--rows", default="1,16,64")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the engine's host is shared)")
    p.add_argument("--out", default=None, help="write the JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [measure(int(n), args.vocab, device, args.repeats) for n in args.rows.split(",")]
    env = environment()
    print(headline(env))
    print_table(rows, ("rows", "vocab", *VARIANTS))
    payload = {"benchmark": "token_mask_apply", "env": env, "threads": args.threads, "rows": rows}
    if args.out:
        write_json(args.out, payload)
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
