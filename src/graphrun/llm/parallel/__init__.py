"""Tensor parallelism: the rank description, the process-group handle, and how weights split per rank."""
