"""`--policy example|pkg.mod:factory` -> the PolicySource to serve (the built-in example, or a factory
imported by its dotted path and called with the server's PolicySettings)."""

from __future__ import annotations

import importlib

from graphrun.errors import ConfigError
from graphrun.serve.act.example import example_policy
from graphrun.serve.act.source import PolicySettings, PolicySource


def load_policy(spec: str, settings: PolicySettings) -> PolicySource:
    """`example` or `pkg.mod:factory` -> the PolicySource to serve."""
    if spec == "example":
        return example_policy(settings)
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--policy {spec}: cannot import the factory ({exc})") from exc
    made = factory(settings)
    if not isinstance(made, PolicySource):
        raise ConfigError(
            f"--policy {spec}: the factory must return a PolicySource (a Pipeline with its /act tensors), "
            f"got {type(made).__name__}"
        )
    return made
