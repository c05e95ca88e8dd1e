"""Server settings: where to listen, who may call, how much to read and queue, how long to drain.

One frozen dataclass. Engine settings stay in `EngineConfig`; this holds only what the HTTP layer decides.
CLI flags default from it. The API keys are secrets: they are left out of the repr (so a logged or
printed config never shows them) and no error message quotes one.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from graphrun.errors import ConfigError

DEFAULT_MAX_REQUEST_BYTES = 16 * 2**20
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """What the HTTP server needs beyond the engine.

    max_queue bounds the requests accepted beyond the `max_num_seqs` the engine runs at once; past it a
    request gets 429 with Retry-After. drain_seconds is how long SIGTERM waits for in-flight requests
    before aborting them. engine_process: the engine host's transport (host/transport.py: a process keeps the
    engine's GIL to itself; host/transport.py: a thread is one process, for debugging and for tests).
    trace_path: record the engine host's step timeline there (serve/trace.py; None: off).

    api_keys: when any is set, every route but /health, /metrics (unless metrics_require_api_key) and the
    API documentation answers 401 unless the request carries `Authorization: Bearer <one of them>`
    (auth.py). max_request_bytes: a larger request body gets 413 before it is read (body_limit.py).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str = "tiny"
    max_queue: int = 256
    drain_seconds: float = 30.0
    retry_after_seconds: int = 1  # the Retry-After header of 429 and 503 answers
    engine_process: bool = True  # the engine in a process of its own (False: a thread of the server's)
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # secrets: never in a repr or a log
    metrics_require_api_key: bool = False
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    trace_path: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.max_queue < 0:
            raise ConfigError(
                f"max_queue must be >= 0 (0: no queue beyond max_num_seqs), got {self.max_queue}"
            )
        if not self.drain_seconds >= 0:
            raise ConfigError(f"drain_seconds must be >= 0, got {self.drain_seconds}")
        if self.retry_after_seconds < 1:
            raise ConfigError(f"retry_after_seconds must be >= 1, got {self.retry_after_seconds}")
        if not self.served_model_name:
            raise ConfigError("served_model_name must be a non-empty string (the `model` clients send)")
        if self.max_request_bytes < 1:
            raise ConfigError(f"max_request_bytes must be >= 1, got {self.max_request_bytes}")
        for index, key in enumerate(self.api_keys):
            _check_api_key(index, key)
        if self.metrics_require_api_key and not self.api_keys:
            raise ConfigError(
                "metrics_require_api_key needs an API key to require: pass --api-key or set GRAPHRUN_API_KEY"
            )

    @property
    def url(self) -> str:
        """The base URL the server answers on."""
        return f"http://{self.host}:{self.port}"

    @property
    def loopback_only(self) -> bool:
        """Whether `host` is a loopback address (127.0.0.0/8, ::1, localhost): no other machine connects."""
        if self.host.lower() in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:  # a host name, or "" (every interface)
            return False


def _check_api_key(index: int, key: str) -> None:
    """A key must travel in an HTTP header unchanged: printable ASCII, no space; no comma (the separator of
    GRAPHRUN_API_KEY). The message names the key's position, never the key."""
    if not key:
        raise ConfigError(f"API key #{index + 1} is empty; pass a non-empty key")
    if not all("!" <= char <= "~" for char in key) or "," in key:
        raise ConfigError(
            f"API key #{index + 1} has a character other than printable ASCII (or a space or a comma); "
            "use letters, digits and punctuation such as - _ . only"
        )


def default_served_model_name(model: str) -> str:
    """The `model` a server answers to when --served-model-name is not given: a checkpoint folder's own
    name (the last component of its path, so /models/Qwen3-0.6B/ is "Qwen3-0.6B"), a preset's name.

    An existing folder wins over a preset of the same name, as the model loader decides.
    """
    if not Path(model).is_dir():
        return model
    return Path(os.path.abspath(model)).name or model  # abspath drops a trailing slash and resolves ".."
