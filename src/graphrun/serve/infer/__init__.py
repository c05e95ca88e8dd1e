"""Serving any model: named tensors in, named tensors out, through the engine host (issue 16 items 2-3).

One concept per file: `errors.py` (the 400 a bad tensor gets), `codec.py` (JSON / .npy / safetensors on
the wire), `schema.py` (what the model takes, and the checks), `dims.py` (dynamic dims besides the
batch a model declares), `source.py` (a module factory or a torch.export archive), `batcher.py`
(coalescing requests per bucket), `calls.py` (a batch's model calls: `rows.py` batch-only through a
GraphRunner, `bucketed.py` batch x declared dims through a BucketedRunner), `model.py` (the served model
the host loop drives), `messages.py` (what a request carries through the host: submission, result, info),
`client.py` (the HTTP side's client), `metrics.py`, `config.py` and `app.py` (the HTTP routes). Shared
with /act: `batching_model.py`, `guards.py` and `tensor_app.py` (the app's frame, a body's reading and
checks, the wait for a result, /health). Nothing here imports FastAPI but app.py, guards.py and
tensor_app.py.
"""
