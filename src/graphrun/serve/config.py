"""Server settings: where to listen, how much to queue, how long to drain. One frozen dataclass.

Engine settings stay in `EngineConfig`; this holds only what the HTTP layer decides. CLI flags default
from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphrun.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """What the HTTP server needs beyond the engine.

    max_queue bounds the requests accepted beyond the `max_num_seqs` the engine runs at once; past it a
    request gets 429 with Retry-After. drain_seconds is how long SIGTERM waits for in-flight requests
    before aborting them. engine_process: see worker.py (a process keeps the engine's GIL to itself;
    a thread is one process, for debugging and for tests that look inside the engine).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str = "tiny"
    max_queue: int = 256
    drain_seconds: float = 30.0
    retry_after_seconds: int = 1  # the Retry-After header of 429 and 503 answers
    engine_process: bool = True  # the engine in a process of its own (False: a thread of the server's)

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

    @property
    def url(self) -> str:
        """The base URL the server answers on."""
        return f"http://{self.host}:{self.port}"
