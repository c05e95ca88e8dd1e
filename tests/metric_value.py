"""One sample of a test's private Prometheus registry (conftest.py's `registry`)."""

from __future__ import annotations

from typing import Any


def value(registry: Any, name: str, **labels: str) -> float:
    """The sample `name{labels}`; 0.0 when the series has no such sample yet."""
    v = registry.get_sample_value(name, labels)
    return 0.0 if v is None else v
