"""Layers shared by the decoder families: norms, rotary embedding, paged attention, MLP."""
