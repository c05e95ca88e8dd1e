"""The uvicorn server of `graphrun serve` (LLM or tensor model): SIGTERM drains, then it shuts down.

The first SIGTERM/SIGINT stops admitting requests (503) and waits up to --drain-seconds for those in
flight, then uvicorn shuts down and the process exits 0; a second signal exits at once. An engine that
failed (at start-up or later) ends the server too, and the caller exits 1.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # uvicorn is the optional `serve` extra: imported when serving
    import uvicorn
    from starlette.types import ASGIApp

    from graphrun.serve.config import ServeConfig
    from graphrun.serve.host.client import EngineClient

log = logging.getLogger("graphrun.serve.cli")

GRACEFUL_SHUTDOWN_SECONDS = 5  # uvicorn's own wait for connections, after the drain


def serve_until_drained(app: ASGIApp, client: EngineClient, serve_config: ServeConfig) -> int:
    """Serve `app` on the configured host and port until SIGTERM/SIGINT has drained `client`; 1 when
    the served model failed (at start or later), else 0."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=serve_config.host,
        port=serve_config.port,
        log_config=None,  # logging is configured by graphrun's CLI; uvicorn's loggers propagate to it
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    draining_server(config, client, serve_config.drain_seconds).run()
    return 1 if client.state == "failed" else 0


def draining_server(config: uvicorn.Config, client: EngineClient, drain_seconds: float) -> uvicorn.Server:
    """A uvicorn.Server whose first SIGTERM/SIGINT drains `client` before shutting down.

    uvicorn's own handler would stop listening at once and re-raise the signal after shutdown (exit
    status -15); this one keeps answering 503 during the drain and lets the process exit 0.
    """
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def __init__(self) -> None:
            super().__init__(config)
            self.drain_thread: threading.Thread | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.drain_thread is None:  # first signal: drain in a thread, then exit
                log.info("%s: draining (new requests get 503)", signal.Signals(sig).name)
                self.drain_thread = threading.Thread(target=self.drain, name="graphrun-drain", daemon=True)
                self.drain_thread.start()
            else:  # second signal: exit now
                self.should_exit = self.force_exit = True

        def drain(self) -> None:
            client.drain(drain_seconds)
            self.should_exit = True

        async def on_tick(self, counter: int) -> bool:
            if client.state == "failed":  # the engine could not start, or its process died
                self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer()
