"""``/healthz`` (the process answers) and ``/readyz`` (backbone loaded, suite verified, taking requests)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import Service
from ..schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (no key needed)."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(state: Service):
    """200 once the backbone is loaded and the suite verified, while requests are taken; 503 otherwise."""
    if state.ready:
        return Readiness(ready=True, suite=state.identity, broken_tasks=dict(state.broken))
    reason = "shutting down" if state.batcher is not None and state.batcher.closing else "loading"
    return JSONResponse(Readiness(ready=False, reason=reason).model_dump(), status_code=503)
