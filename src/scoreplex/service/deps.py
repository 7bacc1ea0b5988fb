"""FastAPI dependencies: the running service, the caller's role, a valid task id; and :class:`ApiError`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from scoreplex.errors import ConfigError
from scoreplex.tasks import check_id

from .keys import role_allows
from .state import ServiceState


class ApiError(HTTPException):
    """An error answered as ``{"detail": {"reason": ..., "message": ...}}`` with ``status``."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, {"reason": reason, "message": message}, headers)


async def get_state(request: Request) -> ServiceState:
    # async, so that FastAPI calls it on the event loop: a plain `def` dependency would hop to the thread pool on
    # every request (measured: about 7% of the event loop's time under load)
    return request.app.state.service


Service = Annotated[ServiceState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <key>`")


def require(role: str):
    """A dependency that lets through callers whose key has ``role`` (or a higher one): 401 without a valid key,
    403 with a key of a lower role. Without configured keys (a loopback-only server) everyone is admin."""

    async def caller_role(
        state: Service,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
        key: Annotated[str | None, Security(_header)] = None,
    ) -> str:
        if not state.keys:
            return "admin"
        got = state.keys.role_of(key or (bearer.credentials if bearer else None))
        if got is None:
            raise ApiError(
                401,
                "unauthorized",
                "a valid API key is needed: send `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
                {"WWW-Authenticate": "Bearer"},
            )
        if not role_allows(got, role):
            raise ApiError(403, "forbidden", f"this route needs an {role} key; the key sent has the {got} role.")
        return got

    return caller_role


def task_id_param(task_id: Annotated[str, Path(max_length=256, description="A task id.")]) -> str:
    """The path's task id, checked with :func:`scoreplex.tasks.check_id` (so it can only name a folder inside the
    suite); 422 naming ``task_id`` otherwise."""
    try:
        return check_id(task_id, "task id")
    except ConfigError as exc:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("path", "task_id"), "msg": str(exc), "input": task_id}]
        ) from None


TaskId = Annotated[str, Depends(task_id_param)]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid API key."},
    403: {"description": "The key's role may not use this route."},
    413: {"description": "The body, or the number of responses, is over the server's limit (named)."},
}
