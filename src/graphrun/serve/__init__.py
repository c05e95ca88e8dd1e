"""graphrun.serve: the OpenAI-compatible HTTP server (FastAPI + uvicorn) over the LLM engine.

`graphrun serve` is the usual entry; in code, `build_app(EngineWorker(engine_config, serve_config),
serve_config)` gives the ASGI app. Nothing is imported here, so `graphrun --help` needs no FastAPI.

    config.py         ServeConfig: host, port, queue bound, drain time, served model name
    worker.py         the engine thread: submit / abort / stream / drain
    request.py        one request between the event loop and the engine thread; its errors
    text.py           token ids -> streamed text, stop strings
    protocol.py       OpenAI request bodies -> token ids + SamplingParams; the error answer
    chat_template.py  chat messages -> prompt text (the model's jinja2 template, or a simple one)
    responses.py      OpenAI response bodies, whole and streamed
    metrics.py        the server's Prometheus series (one registry with the engine's)
    memory.py         /health's memory figures: device allocator, free memory, peak RSS
    app.py            build_app: routes, SSE, error handlers, disconnect watching
    cli.py            `graphrun serve` flags; SIGTERM drains, then exits 0
"""
