"""The app factory: :func:`create_app` builds the FastAPI app of one suite; the engine loads in its lifespan."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import Scope

from .deps import get_state
from .keys import ApiKeys
from .middleware import BodyLimit, RequestMetrics
from .routers import health, metrics, score, tasks
from .settings import ServiceSettings
from .state import ServiceState

log = logging.getLogger("scoreplex.service")

DESCRIPTION = """Score student responses with a scoreplex suite: many task models on one shared encoder.

Send `Authorization: Bearer <key>` (or `X-API-Key`). Scorer keys may score and read tasks; admin keys may also add,
replace and remove tasks. Concurrent requests are scored together in mixed-task batches.
"""


def _limits(settings: ServiceSettings):
    def limit_for(scope: Scope) -> tuple[int, str]:
        if scope.get("method") == "PUT" and scope.get("path", "").startswith("/v1/tasks/"):
            return settings.max_upload_bytes, "--max-upload-bytes, SCOREPLEX_MAX_UPLOAD_BYTES"
        return settings.max_body_bytes, "--max-body-bytes, SCOREPLEX_MAX_BODY_BYTES"

    return limit_for


def _plain(error: dict) -> dict:
    """A validation error without its input (which may be undecodable bytes, or a whole response text)."""
    loc = [x if isinstance(x, int | str) else str(x) for x in error.get("loc", ())]
    return {"type": str(error.get("type", "")), "loc": loc, "msg": str(error.get("msg", ""))}


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field (FastAPI's own handler fails with a 500 on a body that is not UTF-8)."""
    return JSONResponse({"detail": [_plain(e) for e in exc.errors()]}, 422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": {"reason": "internal_error", "message": "the server failed on this request; see its log."}}, 500
    )


TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
"""FastAPI's native OpenTelemetry instrumentation, switched off (see :func:`create_app`)."""


def create_app(settings: ServiceSettings) -> FastAPI:
    """The service's app for ``settings``. API keys are read now (a bad keys file fails here, before any start);
    the suite is verified and the engine loaded when the app starts (its lifespan), off the event loop."""
    from importlib.metadata import version

    api_keys = settings.api_keys.get_secret_value() if settings.api_keys is not None else None
    state = ServiceState(settings, ApiKeys.load(settings.keys_file, api_keys))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(state.load)
        state.start()
        log.info(
            "serving %d tasks of %s (manifest %s)",
            state.identity["tasks"],
            settings.suite,
            state.identity["manifest_sha256"][:12],
        )
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="scoreplex",
        version=version("scoreplex"),
        description=DESCRIPTION,
        lifespan=lifespan,
        # /metrics (prometheus-client) is the service's telemetry; FastAPI's own OpenTelemetry hooks, with no provider
        # configured, still looked for one on every request (about 9% of the event loop's time under load)
        telemetry=TELEMETRY_OFF,
    )
    app.state.service = state
    for router in (score.router, tasks.router, health.router, metrics.router):
        app.include_router(router)
    app.add_middleware(BodyLimit, limit_for=_limits(settings))
    app.add_middleware(RequestMetrics, metrics=state.metrics)  # outermost: 413s are counted too
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    return app


__all__ = ["create_app", "get_state"]
