"""Decoder models in plain PyTorch: one module covers the Llama and Qwen3 families."""

from graphrun.llm.models.decoder import DecoderLM

__all__ = ["DecoderLM"]
