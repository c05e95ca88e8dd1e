"""graphrun.serve: the OpenAI-compatible HTTP server (FastAPI + uvicorn) over the LLM engine.

`graphrun serve` is the usual entry; in code, `build_app(llm_client(engine_config, serve_config),
serve_config, engine_config)` gives the ASGI app. Nothing is imported here, so `graphrun --help` needs
no FastAPI.

    config.py         ServeConfig: host, port, queue bound, drain time, served model name, API keys, trace
    host/             the engine host, for any model: typed envelope, one client, thread or process
                      transport, host loop
    llm_model.py      the LLM engine as the host's served model; llm_client() wires it up
    llm_messages.py   what an LLM request carries through the host: submission, events, model info
    llm_client.py     the LLM's client: prompts in (n choices), text deltas out
    llm_handle.py     an LLM request's handle: prompt, stop strings, counts, ended by a finish reason
    llm_metrics.py    the LLM served model's series: tokens, latencies, occupancy
    infer/            any model on POST /v1/infer: codec, schema, sources, batcher, served model, its
                      messages and client, routes
    deltas.py         a request's events -> text deltas (streamed or collected)
    text.py           token ids -> streamed text, stop strings
    sse.py            streamed answers, written as each step is delivered
    trace.py          --trace-file: the engine host's per-step timeline (its observers)
    protocol.py       OpenAI request bodies -> token ids + SamplingParams; the error answer
    structured.py     response_format and guided_* -> the request's structured output constraint
    chat_template.py  chat messages -> prompt text (the model's jinja2 template, or a simple one)
    responses.py      OpenAI response bodies, whole and streamed
    tokenize.py       /tokenize, /detokenize, /tokenizer_info (vLLM's routes)
    tokenizer_info.py what /tokenizer_info says of the tokenizer; the ids its encode adds to any text
    metrics.py        the HTTP side's Prometheus series (request outcomes)
    memory.py         /health's memory figures: device allocator, free memory, peak RSS
    app.py            build_app: routes, SSE, error handlers, disconnect watching
    auth.py           API keys: 401 before a route runs; the start-up line on who may call
    body_limit.py     --max-request-bytes: 413 before a body is read
    refusal.py        the error answer those two middlewares write themselves
    openapi.py        what /openapi.json declares each route answers (errors, streams, Prometheus text)
    cli.py            `graphrun serve` flags; SIGTERM drains, then exits 0
    flag_checks.py    a refused command line (one line on stderr, exit 2); a tensor route's checked start
"""
