"""Admin changes of the served suite: add or replace a task from an uploaded module folder or from a suite on the
server's disk, and remove a task. Each runs on the engine's worker thread (:meth:`ServiceState.on_worker`).

Every module goes through :meth:`scoreplex.engine.AdapterStore.import_task`, the same path as in Python: the source
suite must have this suite's backbone (by SHA-256), method and pooling; its files are hash-checked, the tensors are
read as safetensors (never unpickled) and parsed, and the module is checked against the running encoder's widths
BEFORE anything is written, so a rejected module leaves the suite and the engine untouched.

An upload is the module folder's two files plus the manifest.json of the suite it comes from: task.json and
module.safetensors do not say which backbone they were trained on, the manifest does. They are laid out as a
one-task suite in a temporary folder and imported from there. A path names a suite folder, or a task folder inside
one, that must lie inside one of the server's import roots (:func:`resolve_inside`, the trust boundary).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from scoreplex.errors import ConfigError, ScoreplexError, UnknownTaskError
from scoreplex.suite import MANIFEST_FILE, MODULE_FILE, TASK_FILE, Suite, write_json_atomic

from .state import ServiceState

UPLOAD_FILES = (TASK_FILE, MODULE_FILE, MANIFEST_FILE)
"""The multipart parts of an upload, named as the files."""


class PathNotAllowed(ScoreplexError, PermissionError):
    """A path outside every import root (or no import root configured)."""


def resolve_inside(raw: str, roots: Sequence[Path]) -> Path:
    """``raw`` resolved (links followed), PathNotAllowed unless it lies inside one of ``roots``."""
    if not roots:
        raise PathNotAllowed(
            "this server imports no folders from its disk: start it with --import-root FOLDER (or "
            "SCOREPLEX_IMPORT_ROOTS), or upload the module's files as multipart/form-data."
        )
    try:
        if "\x00" in raw or not Path(raw).is_absolute():
            raise ConfigError(f"path {raw[:200]!r} is not an absolute path; give the folder's absolute path.")
        target = Path(raw).resolve()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"path {raw[:200]!r} cannot be resolved ({exc}).") from None
    for root in roots:
        root = Path(root).resolve()
        if target == root or root in target.parents:
            return target
    raise PathNotAllowed(
        f"path {raw[:200]!r} is not inside an import root of this server ({', '.join(map(str, roots))}); copy the "
        "module there, or upload its files."
    )


def _import(state: ServiceState, source: Suite, task_id: str) -> bool:
    """Import ``task_id`` from ``source`` into the served suite; True if the task is new, False if replaced."""
    store = state.engine.store
    try:
        source.spec(task_id)  # hash-checked; its task.json must describe this very task
    except UnknownTaskError:
        raise ConfigError(
            f"the module folder holds no task {task_id!r} (it holds: {', '.join(source.task_ids) or 'none'}); "
            "PUT it under the id its task.json gives."
        ) from None
    created = task_id not in store
    store.import_task(source, task_id, replace=True)
    state.broken.pop(task_id, None)
    state.refresh_identity()
    return created


def import_path(state: ServiceState, task_id: str, raw: str) -> bool:
    """Add or replace ``task_id`` from a suite folder, or a task folder ``<suite>/tasks/<task_id>``, on disk."""
    path = resolve_inside(raw, state.settings.import_roots)
    if (path / MANIFEST_FILE).is_file():
        root = path
    elif path.parent.name == "tasks" and (path.parent.parent / MANIFEST_FILE).is_file():
        if path.name != task_id:
            raise ConfigError(f"the task folder {path.name!r} is not task {task_id!r}; PUT it under its own id.")
        root = path.parent.parent
    else:
        raise ConfigError(
            f"path {raw[:200]!r} is neither a suite folder (with {MANIFEST_FILE}) nor a task folder inside one "
            f"(<suite>/tasks/{task_id})."
        )
    return _import(state, Suite.open(root, verify=False), task_id)


def import_upload(state: ServiceState, task_id: str, files: dict[str, bytes]) -> bool:
    """Add or replace ``task_id`` from uploaded ``task.json``, ``module.safetensors`` and the source suite's
    ``manifest.json`` (bytes by file name)."""
    missing = [name for name in UPLOAD_FILES if name not in files]
    if missing:
        raise ConfigError(
            f"the upload lacks {', '.join(missing)}: send the module folder's {TASK_FILE} and {MODULE_FILE} and the "
            f"{MANIFEST_FILE} of its suite (which names the backbone it was trained on) as multipart parts named so."
        )
    try:
        manifest = json.loads(files[MANIFEST_FILE])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the uploaded {MANIFEST_FILE} is not UTF-8 JSON ({exc}).") from None
    if not isinstance(manifest, dict):
        raise ConfigError(f"the uploaded {MANIFEST_FILE} is not a JSON object.")
    with tempfile.TemporaryDirectory(prefix="scoreplex-upload-") as tmp:
        folder = Path(tmp) / "tasks" / task_id  # task_id passed check_id at the route
        folder.mkdir(parents=True)
        for name in (TASK_FILE, MODULE_FILE):
            (folder / name).write_bytes(files[name])
        entry = {
            "files": {name: hashlib.sha256(files[name]).hexdigest() for name in (TASK_FILE, MODULE_FILE)},
            "bytes": len(files[TASK_FILE]) + len(files[MODULE_FILE]),
        }
        write_json_atomic(Path(tmp) / MANIFEST_FILE, {**manifest, "tasks": {task_id: entry}, "shared": {}})
        return _import(state, Suite.open(tmp, verify=False), task_id)


def remove(state: ServiceState, task_id: str) -> None:
    """Remove ``task_id`` from the served suite (UnknownTaskError if it has none)."""
    state.engine.store.remove(task_id)
    state.broken.pop(task_id, None)
    state.refresh_identity()
