"""Run the service with uvicorn: :func:`serve` (what ``scoreplex serve`` calls).

Without API keys the server binds to loopback whatever host was asked, and says so. SIGTERM (or Ctrl-C) shuts down
gracefully: uvicorn stops accepting connections, requests in flight and in the queue finish within
``shutdown_timeout_s``, the lifespan stops the batcher and the worker thread, and the process exits 0.
"""

from __future__ import annotations

import copy
import signal
from collections.abc import Callable

from scoreplex.errors import ScoreplexError

from .app import create_app
from .settings import ServiceSettings
from .state import open_suite


class StartupError(ScoreplexError):
    """The server did not start (the port is taken, the suite failed to load...); its log says why."""


def _log_config() -> dict:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["scoreplex"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def bind_host(settings: ServiceSettings, keys, log: Callable[[str], None] = print) -> str:
    """The interface to bind: ``settings.host``, or 127.0.0.1 when no API keys are configured (said in ``log``).
    Shared by the uvicorn server and the Ray Serve deployment (:mod:`scoreplex.cluster.serving`)."""
    if not keys:
        if not settings.loopback:
            log(
                f"no API keys configured: binding to 127.0.0.1 (loopback only) instead of {settings.host}; give "
                "--keys-file or SCOREPLEX_API_KEYS to serve other hosts."
            )
            return "127.0.0.1"
        log("no API keys configured: loopback only, and every local client may score and change tasks.")
    else:
        log(f"{len(keys)} API key(s) loaded; requests without a valid key get 401.")
    return settings.host


def serve(settings: ServiceSettings, *, log: Callable[[str], None] = print) -> None:
    """Check the suite and the keys, then serve until SIGTERM / SIGINT; returns after a graceful shutdown."""
    import uvicorn

    app = create_app(settings)  # reads the keys: a bad keys file stops here
    host = bind_host(settings, app.state.service.keys, log)
    open_suite(settings)  # a wrong folder, method or backbone ends here with one line, before uvicorn starts
    config = uvicorn.Config(
        app,
        host=host,
        port=settings.port,
        lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        timeout_keep_alive=settings.keep_alive_s,
        access_log=settings.access_log,
        log_config=_log_config(),
        server_header=False,
    )
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM / SIGINT itself, then re-raises the signal to the handler it replaced: make that one
    # a no-op, so that a graceful shutdown ends the process with status 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise StartupError(f"the server did not start on {host}:{settings.port}; its log above says why.")
