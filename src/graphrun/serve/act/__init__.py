"""Serving a policy: an observation in, an action chunk out, at POST /act, through the engine host.

One concept per file: `config.py` (the settings of `graphrun serve --policy`), `source.py` (a PolicySource:
a graphrun.Pipeline with its /act tensors; the built-in name or a `pkg.mod:factory`), `example.py` (the
built-in example policy as one), `schema.py` (what /act takes, and the checks), `messages.py` (what a
request carries through the host), `model.py` (the served model the host loop drives: batched act()),
`client.py` (the HTTP side's client), `metrics.py`, `cli.py` (the flags) and `app.py` (the HTTP routes).
The wire codec, the 400 error and the batcher are /v1/infer's (serve/infer/). Nothing here imports
FastAPI but app.py.
"""
