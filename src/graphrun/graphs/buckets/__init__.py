"""Buckets over several dynamic dims: batch x sequence length (x ...), each padded to its rung.

An encoder's calls vary in batch and in length. A BucketedRunner (runner.py) declares the other dynamic
dims (BucketDim: which input axes carry each, its rungs, its pad value) and the mask input; it holds one
batch-ladder GraphRunner per bucket, a combination of one rung per dim, so the graphs are the product
batch rungs x each dim's rungs, refused with a ConfigError naming the product when over `max_graphs`.
Memory: every bucket shares one backend, so on CUDA one graph pool that grows to the largest capture,
not the sum (`runner.memory_budget_bytes` skips captures past it, as in GraphRunner); the static buffers
are per bucket, estimated before anything is allocated (inputs exact, outputs scaled by the bucket's
volume) and refused past the same budget.

A call pads every bucketed dim to its bucket's rung (pad_value; the mask with 0, built as ones on the
real positions when the call omits it), the bucket's runner pads the batch and replays, and outputs are
sliced back along the axes that follow each dim: declared in BucketDim.output_axes, else inferred by two
eager runs at sizes that differ (an axis whose length equals the dim's size in both), which is safe for an
axis equal to the size and leaves alone any other (a pooled output). Padding is verified per dim at
construction (verify.py): a bucket whose padded answer differs from eager replays exact sizes along that
dim only, so a model that ignores its mask is never silently wrong.

`bucket_of(shapes)` is a pure function from input shapes to a Bucket (the rung per dim: the key a
dynamic batcher groups requests by, and the batch rung), and `pad_to(inputs, bucket)` pads one request
to a bucket so requests of different lengths can be stacked.
"""

from graphrun.graphs.buckets.runner import BucketedRunner
from graphrun.graphs.buckets.spec import BATCH, Bucket, BucketDim, BucketOptions
from graphrun.graphs.buckets.status import BucketedStatus, BucketStatus

__all__ = [
    "BATCH",
    "Bucket",
    "BucketDim",
    "BucketOptions",
    "BucketStatus",
    "BucketedRunner",
    "BucketedStatus",
]
