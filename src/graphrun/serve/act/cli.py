"""`graphrun serve --policy example | pkg.mod:factory`: the flags of a served policy (POST /act).

serve/cli.py registers these beside the LLM's and the tensor model's and hands a run with --policy here,
with the ServeConfig it built from the shared flags (host, port, queue, keys, body limit, drain, engine
process). The graph flags (--graph-backend, --enforce-eager, --cuda-graph-sizes, --cuda-graph-max-bs),
--dtype, --device and the batching flags (--batch-wait-ms, --max-batch-requests) are the shared ones.
Checked before torch loads, like the rest.
"""

from __future__ import annotations

import argparse

from graphrun.errors import ConfigError
from graphrun.serve.act.config import BUILTIN_POLICIES, DEFAULT_MAX_BATCH_SIZE, ActConfig
from graphrun.serve.config import ServeConfig
from graphrun.serve.flag_checks import run_checked


def add_act_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `graphrun serve` for a policy."""
    group = p.add_argument_group("serving a policy (POST /act)")
    group.add_argument(
        "--policy",
        default=None,
        metavar="NAME|PKG.MOD:FACTORY",
        help=f"serve a policy at POST /act: a built-in one {list(BUILTIN_POLICIES)}, or the PolicySource "
        "factory(settings) returns; the default ladder is 1,2,4,8 (--cuda-graph-max-bs, --cuda-graph-sizes)",
    )
    group.add_argument(
        "--denoising-steps",
        type=int,
        default=None,
        metavar="N",
        help="the policy's denoising steps per action chunk (default: the policy's own, 10 for example)",
    )


def wants_act(args: argparse.Namespace) -> bool:
    return args.policy is not None


def act_config(args: argparse.Namespace) -> ActConfig:
    """The policy's settings from the flags (validated by the dataclass and here, without torch)."""
    if args.model is not None or args.module is not None or args.exported is not None:
        raise ConfigError("--policy serves a policy at /act; drop --model/--module/--exported")
    return ActConfig(
        policy=args.policy,
        denoising_steps=args.denoising_steps,
        device=args.device,
        dtype=args.dtype,
        graph_backend=args.graph_backend,
        enforce_eager=args.enforce_eager,
        cuda_graph_sizes=args.cuda_graph_sizes,
        cuda_graph_max_bs=args.cuda_graph_max_bs or DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms=args.batch_wait_ms,
        max_batch_requests=args.max_batch_requests,
    )


def run_act(args: argparse.Namespace, serve_config: ServeConfig) -> int:
    """Check the flags (a problem: one line on stderr, exit 2), then serve the policy."""
    return run_checked(args, serve_config, act_config, _default_name, serve_act)


def _default_name(config: ActConfig) -> str:
    """The built-in policy's name, or the factory's."""
    return config.policy.rpartition(":")[2]


def serve_act(config: ActConfig, serve_config: ServeConfig) -> int:
    """Serve until SIGTERM/SIGINT has drained the server; 1 when the policy failed (at start or later)."""
    from graphrun.serve.act.app import build_act_app
    from graphrun.serve.act.model import act_client
    from graphrun.serve.auth import log_access_policy
    from graphrun.serve.draining import serve_until_drained

    log_access_policy(serve_config)
    client = act_client(config, serve_config)
    return serve_until_drained(build_act_app(client, serve_config), client, serve_config)
