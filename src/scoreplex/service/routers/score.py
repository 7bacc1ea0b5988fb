"""``POST /v1/score``: score responses of any mix of tasks; a bad row fails alone."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends

from scoreplex.content import EMPTY_TEXT, EMPTY_TEXT_FIX

from ..batching import Closing, QueueFull
from ..deps import ERRORS, ApiError, Service, require
from ..schemas import ApiErrorResponse, ResponseIn, RowError, ScoredResponse, ScoreRequest, ScoreResponse

log = logging.getLogger("scoreplex.service")
router = APIRouter(prefix="/v1", tags=["scoring"])


def _message(reason: str, response: ResponseIn, engine_message: str) -> str:
    """The client's message for a failed row: no server paths, no position within the server's batch."""
    if reason == "unknown_task":
        return f"task {response.task!r} is not in the served suite; GET /v1/tasks lists its tasks."
    if reason == "empty_text":
        return f"{EMPTY_TEXT} Fix: {EMPTY_TEXT_FIX}"
    if reason == "task_unavailable":
        log.warning("task %r cannot score: %s", response.task, engine_message)
        return (
            f"task {response.task!r} cannot score now: its module is missing or corrupt on the server; an admin can "
            f"replace it (PUT /v1/tasks/{response.task})."
        )
    return engine_message


def _scored(response: ResponseIn, row: dict[str, Any]) -> ScoredResponse:
    if "error" in row:
        reason = row["reason"]
        return ScoredResponse(
            id=response.id,
            task=response.task,
            error=RowError(reason=reason, message=_message(reason, response, row["error"])),
        )
    return ScoredResponse(
        id=response.id,
        task=row["task"],
        scores=row["labels"],
        probabilities=row["probs"],
        confidence=row["confidence"],
        route=row["route"],
    )


@router.post(
    "/score",
    response_model=ScoreResponse,
    dependencies=[Depends(require("scorer"))],
    responses={
        **ERRORS,
        429: {"model": ApiErrorResponse, "description": "The queue is full; retry after Retry-After seconds."},
        503: {"model": ApiErrorResponse, "description": "Starting or shutting down; retry elsewhere or later."},
    },
)
async def score(body: ScoreRequest, state: Service) -> ScoreResponse:
    """Score each response with its task's model: per response its scores per rubric dimension, class
    probabilities and confidence, or an error for that response only (unknown task, empty text...)."""
    settings = state.settings
    n = len(body.responses)
    if n > settings.max_rows:
        state.metrics.rejected.labels("too_many_rows").inc()
        raise ApiError(
            413,
            "too_many_rows",
            f"{n} responses in one request; this server takes at most max_rows={settings.max_rows} "
            "(--max-rows, SCOREPLEX_MAX_ROWS): split the request.",
        )
    retry = {"Retry-After": str(settings.retry_after_s)}
    if not state.ready:
        raise ApiError(503, "not_ready", "the server is starting or shutting down; retry shortly.", retry)
    try:
        identity, rows = await state.batcher.submit([(r.task, r.text) for r in body.responses])
    except QueueFull:
        state.metrics.rejected.labels("queue_full").inc()
        raise ApiError(
            429, "queue_full", f"the server's queue is full ({settings.queue_size} requests); retry shortly.", retry
        ) from None
    except Closing:
        raise ApiError(503, "shutting_down", "the server is shutting down; retry elsewhere.", retry) from None
    results = [_scored(r, row) for r, row in zip(body.responses, rows, strict=True)]
    failed = sum(r.error is not None for r in results)
    state.metrics.rows.labels("scored").inc(n - failed)
    if failed:
        state.metrics.rows.labels("error").inc(failed)
    return ScoreResponse(suite=identity, results=results)
