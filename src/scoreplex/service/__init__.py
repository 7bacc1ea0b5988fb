"""The scoring service over HTTP (``scoreplex serve``; needs the ``service`` extra).

A thin FastAPI layer over :class:`scoreplex.engine.Engine`: :func:`create_app` (the app factory),
:class:`ServiceSettings` (flags and ``SCOREPLEX_*`` variables), :func:`serve` (uvicorn, graceful SIGTERM). Layout:
``settings`` · ``keys`` (API keys, roles) · ``state`` (the engine and its worker thread) · ``batching`` (dynamic
batching) · ``modules`` (admin changes of the suite) · ``metrics`` (Prometheus) · ``middleware`` (body limit,
request metrics) · ``schemas`` (pydantic bodies) · ``routers/`` (one per resource).
"""

from .app import create_app
from .server import serve
from .settings import ServiceSettings, settings_error_text

__all__ = ["ServiceSettings", "create_app", "serve", "settings_error_text"]
