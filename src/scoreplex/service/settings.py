"""The service's settings: command-line flags, else ``SCOREPLEX_*`` environment variables, else the defaults.

One pydantic-settings model, frozen once the server starts. ``scoreplex serve`` passes only the flags that were
given, so an environment variable fills every flag left out (``SCOREPLEX_PORT=9000``, ``SCOREPLEX_MAX_ROWS=256``...).
API keys are secrets: they are never printed, logged or shown in a repr.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "SCOREPLEX_"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
FLAGS = {
    "suite": "SUITE",
    "import_roots": "--import-root",
    "shutdown_timeout_s": "--shutdown-timeout",
    "keep_alive_s": "--keep-alive",
    "api_keys": "",
}
"""`scoreplex serve`'s name of a field where it is not ``--field-name`` ("": environment only)."""


class ServiceSettings(BaseSettings):
    """Everything `scoreplex serve` can be told; each field is also ``SCOREPLEX_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    suite: Path
    """The suite folder to serve (its method must share one backbone pass: lora, head or moe)."""
    host: str = "127.0.0.1"
    """Interface to bind. Without API keys the server binds to loopback whatever this says."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port (0: any free port)."""
    backbone: str | None = None
    """Backbone name or folder; default: the one recorded in the suite (under a trusted root)."""
    max_batch_rows: int = Field(256, ge=1, le=65536)
    """Rows gathered from concurrent requests into one engine call (a larger request is scored alone)."""
    max_wait_ms: float = Field(20.0, ge=0, le=10_000)
    """Under load, how long the first request of a batch waits at most for others to join it (the wait also ends
    3 ms after the last arrival); a lone request on an idle server never waits."""
    queue_size: int = Field(256, ge=1, le=1_000_000)
    """Requests waiting for the engine; one more is refused with 429 and Retry-After."""
    max_body_bytes: int = Field(4 << 20, ge=1024)
    """Largest request body (bytes) of every route but module uploads; more is refused with 413."""
    max_upload_bytes: int = Field(256 << 20, ge=1024)
    """Largest body of `PUT /v1/tasks/{id}` (a module upload); more is refused with 413."""
    max_rows: int = Field(1024, ge=1, le=1_000_000)
    """Responses per score request; more is refused with 413 naming this limit."""
    max_tasks: int | None = Field(None, ge=1)
    """Task modules held in memory (LRU beyond it); None: no limit."""
    keys_file: Path | None = None
    """File of API keys, one ``role:key`` a line (roles: scorer, admin); ``#`` starts a comment."""
    api_keys: SecretStr | None = None
    """API keys as ``role:key`` separated by commas or whitespace (``SCOREPLEX_API_KEYS``); added to keys_file's."""
    import_roots: Annotated[tuple[Path, ...], NoDecode] = ()
    """Folders whose suites `PUT /v1/tasks/{id}` may import from by path (``SCOREPLEX_IMPORT_ROOTS``: separated by
    the OS path separator); none: path imports are refused, uploads still work."""
    retry_after_s: int = Field(1, ge=1, le=3600)
    """Seconds a refused (429 / 503) client is told to wait."""
    shutdown_timeout_s: float = Field(30.0, ge=0, le=3600)
    """On SIGTERM: how long queued and in-flight requests may take to finish before they are cut off."""
    keep_alive_s: float = Field(75.0, gt=0, le=3600)
    """How long an idle kept-alive connection stays open. Longer than clients' own pool expiry (httpx: 5 s), so a
    client never sends a request on a connection the server is closing at that moment (uvicorn's default of 5 s
    raced with httpx's 5 s under load); 75 s is nginx's default."""
    access_log: bool = False
    """Log one line per request (uvicorn's access log). Off by default: /metrics counts requests by route and status,
    and the line costs the event loop about 7% of its time under load."""

    @field_validator("import_roots", mode="before")
    @classmethod
    def _split_roots(cls, value):
        if isinstance(value, str):
            return tuple(p for p in value.split(os.pathsep) if p.strip())
        return value

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")


def settings_error_text(exc) -> str:
    """One line per bad setting of a pydantic ValidationError, naming the flag and the variable."""
    parts = []
    for err in exc.errors(include_url=False):
        field = str(err["loc"][0]) if err["loc"] else "?"
        env = f"{ENV_PREFIX}{field.upper()}"
        flag = FLAGS.get(field, "--" + field.replace("_", "-"))
        parts.append(f"{flag} ({env}): {err['msg']}" if flag else f"{env}: {err['msg']}")
    return "; ".join(parts) + "."
