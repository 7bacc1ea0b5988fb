"""``/v1/tasks``: list and describe the served tasks (scorer keys); add, replace and remove them (admin keys).

``PUT /v1/tasks/{task_id}`` takes either a multipart upload of a module folder's ``task.json`` and
``module.safetensors`` with its suite's ``manifest.json``, or JSON ``{"path": ...}`` naming a suite folder (or a task
folder in one) inside an import root on the server. The module is checked before anything is written; a rejected
one gets 422 with the reason, and the served suite stays as it was (:mod:`scoreplex.service.modules`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from scoreplex.errors import ScoreplexError, SuiteError, UnknownTaskError

from .. import modules
from ..deps import ERRORS, ApiError, Service, TaskId, require
from ..schemas import ApiErrorResponse, TaskChanged, TaskList, TaskOut, TaskPath
from ..state import ServiceState

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
NOT_FOUND = {404: {"model": ApiErrorResponse, "description": "The suite holds no such task."}}
REJECTED = {
    403: {"model": ApiErrorResponse, "description": "A scorer key, or a path outside the import roots."},
    422: {"description": "The module is rejected (another backbone, corrupt, wrong widths...) or a field is bad."},
}


def _task_out(state: ServiceState, task_id: str) -> TaskOut:
    suite = state.engine.suite
    entry = suite.manifest["tasks"][task_id]
    if task_id in state.broken:
        return TaskOut(id=task_id, available=False, error=state.broken[task_id], bytes=int(entry.get("bytes", 0)))
    try:
        spec = suite.spec(task_id)
    except SuiteError as exc:
        return TaskOut(id=task_id, available=False, error=str(exc), bytes=int(entry.get("bytes", 0)))
    return TaskOut.from_spec(spec, entry)


def _task_list(state: ServiceState) -> TaskList:
    return TaskList(suite=state.identity, tasks=[_task_out(state, t) for t in state.engine.task_ids])


def _one_task(state: ServiceState, task_id: str) -> TaskOut | None:
    return _task_out(state, task_id) if task_id in state.engine.store else None


@router.get("", response_model=TaskList, dependencies=[Depends(require("scorer"))], responses=ERRORS)
async def list_tasks(state: Service) -> TaskList:
    """Every task: its rubric dimensions and classes, prompt, rubric and validation metrics from the manifest."""
    return await state.on_worker(_task_list, state)


@router.get(
    "/{task_id}", response_model=TaskOut, dependencies=[Depends(require("scorer"))], responses={**ERRORS, **NOT_FOUND}
)
async def get_task(task_id: TaskId, state: Service) -> TaskOut:
    """One task: its rubric dimensions and classes, prompt, rubric and validation metrics."""
    task = await state.on_worker(_one_task, state, task_id)
    if task is None:
        raise ApiError(404, "unknown_task", f"task {task_id!r} is not in the served suite.")
    return task


async def _read_upload(request: Request) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        form = await request.form(max_files=len(modules.UPLOAD_FILES), max_fields=len(modules.UPLOAD_FILES))
    except (AssertionError, ValueError, KeyError) as exc:  # python-multipart's own parse errors
        raise ApiError(400, "bad_multipart", f"the multipart body cannot be parsed ({exc}).") from None
    try:
        for name in modules.UPLOAD_FILES:
            value = form.get(name)
            if isinstance(value, UploadFile):
                files[name] = await value.read()
            elif isinstance(value, str):
                files[name] = value.encode("utf-8", "surrogatepass")
    finally:
        await form.close()
    return files


async def _change(state: ServiceState, fn, *args) -> bool:
    try:
        return await state.on_worker(fn, state, *args)
    except modules.PathNotAllowed as exc:
        raise ApiError(403, "path_not_allowed", str(exc)) from None
    except UnknownTaskError as exc:
        raise ApiError(404, "unknown_task", str(exc)) from None
    except ScoreplexError as exc:
        raise ApiError(422, "module_rejected", f"{exc} The served suite is unchanged.") from None
    except OSError as exc:
        raise ApiError(422, "module_rejected", f"{exc.strerror or exc}. The served suite is unchanged.") from None


_PUT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": list(modules.UPLOAD_FILES),
                    "properties": {name: {"type": "string", "format": "binary"} for name in modules.UPLOAD_FILES},
                }
            },
            "application/json": {"schema": TaskPath.model_json_schema()},
        },
    }
}


@router.put(
    "/{task_id}",
    response_model=TaskChanged,
    status_code=201,
    dependencies=[Depends(require("admin"))],
    openapi_extra=_PUT_BODY,
    responses={**ERRORS, **REJECTED, 200: {"model": TaskChanged, "description": "Replaced."}},
)
async def put_task(task_id: TaskId, request: Request, response: Response, state: Service) -> TaskChanged:
    """Add (201) or replace (200) a task from an uploaded module folder or a suite folder on the server's disk."""
    if not state.ready:
        raise ApiError(503, "not_ready", "the server is starting or shutting down; retry shortly.")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        created = await _change(state, modules.import_upload, task_id, await _read_upload(request))
    elif ctype == "application/json":
        try:
            body = TaskPath.model_validate_json(await request.body())
        except ValidationError as exc:
            from fastapi.exceptions import RequestValidationError

            errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            raise RequestValidationError(errors) from None
        created = await _change(state, modules.import_path, task_id, body.path)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            'send multipart/form-data (task.json, module.safetensors, manifest.json) or application/json {"path"}.',
        )
    response.status_code = 201 if created else 200
    return TaskChanged(task=task_id, status="created" if created else "replaced", suite=state.identity)


@router.delete(
    "/{task_id}",
    response_model=TaskChanged,
    dependencies=[Depends(require("admin"))],
    responses={**ERRORS, **NOT_FOUND},
)
async def delete_task(task_id: TaskId, state: Service) -> TaskChanged:
    """Remove a task from the suite (its folder too) and from memory."""
    if not state.ready:
        raise ApiError(503, "not_ready", "the server is starting or shutting down; retry shortly.")
    await _change(state, modules.remove, task_id)
    return TaskChanged(task=task_id, status="removed", suite=state.identity)
