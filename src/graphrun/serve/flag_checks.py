"""How `graphrun serve` refuses bad flags, and how a tensor route's server (/v1/infer, /act) starts behind
its checks: a problem found before anything starts (a flag, the serve extra, a busy port) is one line on
stderr and exit status 2, in milliseconds, before torch loads."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import TypeVar

from graphrun.errors import GraphrunError
from graphrun.preflight import check_port_free, check_serve_extra
from graphrun.refuse import refuse
from graphrun.serve.config import ServeConfig

C = TypeVar("C")


def run_checked(
    args: argparse.Namespace,
    serve_config: ServeConfig,
    config_of: Callable[[argparse.Namespace], C],
    default_name: Callable[[C], str],
    serve: Callable[[C, ServeConfig], int],
) -> int:
    """The model's settings from the flags (config_of) and its served name (--served-model-name, else
    default_name), the serve extra and the port checked; then serve(config, serve_config)."""
    try:
        config = config_of(args)
        name = args.served_model_name or default_name(config)
        serve_config = dataclasses.replace(serve_config, served_model_name=name)
        check_serve_extra()
        check_port_free(serve_config.host, serve_config.port)
    except GraphrunError as exc:
        return refuse("serve", exc)
    return serve(config, serve_config)
