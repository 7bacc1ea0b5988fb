"""Pure ASGI middleware: the request body size limit (413) and the per-request metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so that bodies stream through and the limit holds for chunked bodies too: the
declared Content-Length is checked first, then the bytes actually received.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ServiceMetrics


async def _send_json(send: Send, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """413 for a body over ``limit_for(scope)`` bytes (``(limit, option name)``), before the app parses it."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], tuple[int, str]]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, option = self.limit_for(scope)
        detail = {
            "reason": "body_too_large",
            "message": f"the request body is over this server's limit of {limit:,} bytes ({option}).",
        }
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(
                    send, 400, {"detail": {"reason": "bad_request", "message": "Content-Length is not a number."}}
                )
                return
            if int(declared) > limit:
                await _send_json(send, 413, {"detail": detail}, [(b"connection", b"close")])
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, detail)
            return message

        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watch)
        except HTTPException as exc:  # raised by `limited` where no handler turned it into a response
            if exc.status_code != 413 or started:
                raise
            await _send_json(send, 413, {"detail": detail}, [(b"connection", b"close")])


class RequestMetrics:
    """Count every HTTP request by route template, method and status, and time it."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)
