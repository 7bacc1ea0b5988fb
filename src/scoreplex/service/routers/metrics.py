"""``GET /metrics``: the service's Prometheus metrics (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import Service

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(state: Service) -> Response:
    """Requests by route and status, latency, batch sizes, queue depth, the adapter cache and the tasks loaded."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
