"""The LLM engine: decoder models, weights, tokenizer, paged KV cache, scheduler, graph-captured decode."""
