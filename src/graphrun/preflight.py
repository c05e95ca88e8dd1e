"""Checks the commands run before they start anything: fail in milliseconds, in one line, not after start-up.

`graphrun serve` used to load torch, start the engine (seconds; minutes on a GPU), print "Uvicorn
running" and only then fail on a model path that does not exist or a port that is taken, with a
traceback. Everything here is cheap and torch-free: file names, config.json, a bind attempt. What it
cannot know cheaply (the tensors inside the checkpoint, GPU memory) is still checked where it is loaded.
Each check raises ConfigError with a message that names the flag, the bad value and the fix; the CLI
prints it as `graphrun <command>: error: <message>` and exits 2, as argparse does for a bad flag.
"""

from __future__ import annotations

import errno
import importlib.util
import socket
from pathlib import Path

from graphrun.errors import ConfigError
from graphrun.llm.checkpoint import read_checkpoint_config
from graphrun.llm.config import ModelConfig
from graphrun.llm.engine_config import EngineConfig, GraphsOff
from graphrun.llm.parallel.config import ParallelConfig
from graphrun.llm.parallel.shards import ShardError, ShardLayout
from graphrun.llm.preset_configs import PRESETS

# why decode graphs are off, as a user reads it, with the way to turn them on where there is one
_OFF_BECAUSE = {
    GraphsOff.ENFORCE_EAGER: "--enforce-eager is set",
    GraphsOff.MAX_BS_ZERO: "--cuda-graph-max-bs is 0",
    GraphsOff.NO_CUDA_DEVICE: "no CUDA device (--graph-backend auto; --graph-backend sim simulates graphs)",
    GraphsOff.MODE_NONE: "--cuda-graph-mode is none",
}


def check_engine_model(engine: EngineConfig) -> None:
    """The engine's model exists and loads in principle, --max-model-len fits it, and it splits across
    --tensor-parallel-size ranks."""
    config = check_model(engine.model)
    check_max_model_len(engine.max_model_len, engine.model, config)
    check_tensor_parallel(engine.tensor_parallel_size, engine.model, config)


def check_tensor_parallel(
    size: int, model: str, config: ModelConfig, flag: str = "--tensor-parallel-size"
) -> None:
    """Every split dimension of the model divides by the tensor-parallel size (ShardLayout's rules)."""
    if size == 1:
        return
    try:
        ShardLayout.from_model(config, ParallelConfig(size, 0))
    except ShardError as exc:
        raise ConfigError(f"{flag} {size} does not split {model!r}: {exc}") from None


def idle_graph_flags(engine: EngineConfig, off: GraphsOff | None) -> list[str]:
    """One line per graph flag that was set but does nothing, because decode graphs are off (or, in
    --cuda-graph-mode piecewise, because there is no FULL decode ladder)."""
    if off is None:
        return _idle_in_piecewise_mode(engine) if engine.cuda_graph_mode == "piecewise" else []
    given = {
        "--cuda-graph-sizes": ",".join(map(str, engine.cuda_graph_sizes))
        if engine.cuda_graph_sizes
        else None,
        "--cuda-graph-max-bs": engine.cuda_graph_max_bs if off is not GraphsOff.MAX_BS_ZERO else None,
        "--cuda-graph-max-prefill-tokens": engine.cuda_graph_max_prefill_tokens,
        "--graph-backend": engine.graph_backend if engine.graph_backend != "auto" else None,
        "--compile": "" if engine.compile else None,  # only graphed steps are compiled
        "--capture": engine.capture if engine.capture != "now" else None,
    }
    return [
        f"{flag}{f' {value}' if value != '' else ''} does nothing: "
        f"decode graphs are off ({_OFF_BECAUSE[off]})"
        for flag, value in given.items()
        if value is not None
    ]


def _idle_in_piecewise_mode(engine: EngineConfig) -> list[str]:
    """The FULL-graph flags set with --cuda-graph-mode piecewise, which captures no FULL graphs."""
    sizes = ",".join(map(str, engine.cuda_graph_sizes))
    given = {
        "--cuda-graph-sizes": sizes or None,
        "--compile": "" if engine.compile else None,  # piecewise segments are not compiled
    }
    return [
        f"{flag}{f' {value}' if value else ''} does nothing: --cuda-graph-mode piecewise captures no FULL "
        "graphs (full_and_piecewise does)"
        for flag, value in given.items()
        if value is not None
    ]


def check_model(model: str) -> ModelConfig:
    """The architecture behind a --model value: a checkpoint folder (it wins) or a built-in preset."""
    path = Path(model)
    if path.is_dir():
        return read_checkpoint_config(path)
    if model in PRESETS:
        return PRESETS[model]
    if path.exists():
        raise ConfigError(
            f"--model {model!r} is a file; pass a Hugging Face checkpoint folder (config.json, "
            f"*.safetensors, tokenizer.json) or a built-in preset ({', '.join(sorted(PRESETS))})"
        )
    raise ConfigError(
        f"--model {model!r} is neither an existing folder nor a built-in preset "
        f"({', '.join(sorted(PRESETS))}); check the path"
    )


def check_max_model_len(max_model_len: int | None, model: str, config: ModelConfig) -> None:
    """--max-model-len must fit the model's own context (its max_position_embeddings)."""
    limit = config.max_position_embeddings
    if max_model_len is not None and max_model_len > limit:
        raise ConfigError(
            f"--max-model-len {max_model_len} exceeds what {model!r} supports "
            f"(max_position_embeddings={limit}); pass at most {limit}, or leave it unset "
            f"(the default is {min(4096, limit)})"
        )


def check_port_free(host: str, port: int, flag: str = "--port") -> None:
    """Bind host:port the way uvicorn will (SO_REUSEADDR), then let it go; port 0 always works.

    A process could still take the port between this check and the server's bind; this catches the
    common case (a server already running) before the engine spends its start-up.
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"--host {host!r} does not resolve ({exc.strerror}); pass an address such as 127.0.0.1"
        ) from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise ConfigError(_bind_problem(host, port, flag, exc)) from None


def _bind_problem(host: str, port: int, flag: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{flag} {port}: {host}:{port} is already in use (another server?); stop it or pick another port"
        )
    if exc.errno == errno.EACCES:
        return f"{flag} {port}: no permission to listen on {host}:{port} (ports below 1024 need root)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {host!r} is not an address of this machine; pass 127.0.0.1 or 0.0.0.0"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def check_out_dir(path: Path, flag: str = "--out") -> None:
    """A results folder must be a folder, or creatable: fail now, not after a run of minutes."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == path else f"cannot be created: {str(existing)!r} is a file"
        raise ConfigError(f"{flag} {str(path)!r} {where}; pass a folder for the results")


def check_file(path: Path, flag: str) -> None:
    """A file argument must name a readable file."""
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not found"
        raise ConfigError(f"{flag} {str(path)!r}: {what}; pass an existing file")


def check_serve_extra() -> None:
    """`graphrun serve` needs FastAPI and uvicorn (the `serve` extra); found without importing them."""
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"graphrun serve needs the `serve` extra ({', '.join(missing)} not installed): "
            "pip install 'graphrun[serve]'"
        )
