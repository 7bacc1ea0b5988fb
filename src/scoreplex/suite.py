"""A suite: one deployable folder holding every task's module for one backbone.

Layout::

    suite/
      manifest.json                 backbone identity + hash, method, pooling, max_length, tasks, versions, metrics
      tasks/<task id>/task.json     the TaskSpec, the method's module config, training summary
      tasks/<task id>/module.safetensors   the task's tensors (LoRA A/B + head, a head, or a whole encoder + head)
      shared/<name>.safetensors     tensors several tasks share (a merged group's encoder, a student's); optional

**Writing.** Every change to ``manifest.json`` (train, add, replace, remove, merge, adapt) goes through ONE writer,
:meth:`Suite.edit`: it holds a file lock across
re-read -> modify -> atomic replace, so two processes adding tasks to one suite at the same time lose nothing. The
lock is an advisory ``flock`` on the suite folder itself (POSIX), so it leaves no file behind and dies with its
process. Module
files are written to a temporary name and renamed into place before the manifest names them, so an interrupted run
leaves a loadable suite of the tasks finished so far.

**Reading.** A suite reads each file once per process: the bytes are read, checked against the SHA-256 in the
manifest and parsed from those same bytes (what is checked is what is loaded), and the parsed tensors / JSON are kept
in a cache shared by every consumer in the process (scorer, engine, merging, distillation), under a byte budget
(:attr:`Suite.cache_bytes`). :attr:`Suite.hash_counts` counts the hash checks per file.

**Trust.** A suite may come from a stranger: task ids and shared-module names read from the manifest follow the
same rule as ids given on the command line (:func:`scoreplex.tasks.check_id`), and every path is resolved and
refused unless it lies inside the suite folder (:meth:`Suite.path`) before anything is read, hashed or deleted.
No pickle: tensors are safetensors, everything else JSON.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scoreplex.errors import BackboneMismatchError, ConfigError, SuiteError, UnknownTaskError
from scoreplex.tasks import TaskSpec, check_id

FORMAT = "scoreplex-suite"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODULE_FILE = "module.safetensors"
TASK_FILE = "task.json"
TASK_FILES = (MODULE_FILE, TASK_FILE)
SHARED_DIR = "shared"
DEFAULT_CACHE_BYTES = 2 << 30
"""Parsed module bytes a suite keeps in memory (least recently used beyond it are re-read, and re-verified)."""
LOCK_TIMEOUT_S = 600.0


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


def package_versions(packages=("scoreplex", "torch", "transformers", "peft", "safetensors")) -> dict[str, str]:
    """Installed version of each package (``"not installed"`` when absent), for manifests and sidecars."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _check_manifest(manifest: Any, path: Path) -> None:
    """SuiteError naming ``path`` and the field if the manifest does not have the suite format's shape."""

    def bad(field: str, want: str) -> SuiteError:
        got = manifest.get(field) if isinstance(manifest, dict) else manifest
        return SuiteError(
            f"{path}: field {field!r} should be {want}, found {type(got).__name__} {str(got)[:60]!r}; restore the "
            "suite folder or retrain it."
        )

    if not isinstance(manifest, dict):
        raise bad("(top level)", "a JSON object")
    version = manifest.get("format_version", 0)
    if manifest.get("format") != FORMAT or not isinstance(version, int) or version > FORMAT_VERSION:
        raise SuiteError(
            f"{path} is format {manifest.get('format')!r} v{manifest.get('format_version')}; this scoreplex reads "
            f"{FORMAT!r} up to v{FORMAT_VERSION}. Upgrade scoreplex or retrain."
        )
    for field, kind, want in (
        ("method", str, "a method name"),
        ("pooling", str, "a pooling name"),
        ("backbone", dict, "an object with the backbone's name and sha256"),
        ("tasks", dict, "an object {task id: entry}"),
    ):
        if not isinstance(manifest.get(field), kind):
            raise bad(field, want)
    from scoreplex.backbone import POOLINGS
    from scoreplex.methods import METHODS

    if manifest["method"] not in METHODS:
        raise SuiteError(
            f"{path}: field 'method' is {manifest['method']!r}, which this scoreplex does not know (it knows "
            f"{', '.join(METHODS)}); upgrade scoreplex, or restore the manifest."
        )
    if manifest["pooling"] not in POOLINGS:
        raise SuiteError(
            f"{path}: field 'pooling' is {manifest['pooling']!r}, not one of {', '.join(POOLINGS)}; restore the "
            "manifest."
        )
    max_length = manifest.get("max_length")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or not 1 <= max_length <= 1 << 20:
        raise bad("max_length", "a positive token count")
    if not isinstance(manifest["backbone"].get("sha256"), str):
        raise bad("backbone", "an object with a 'sha256' string")
    if not isinstance(manifest.get("shared", {}), dict):
        raise bad("shared", "an object {name: entry}")
    for task_id, entry in manifest["tasks"].items():
        try:
            check_id(task_id, "task id")
        except ConfigError as exc:
            raise SuiteError(
                f"{path}: {exc} A suite's task ids name its folders; this manifest is not trusted."
            ) from None
        files = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(files, dict) or set(files) != set(TASK_FILES):
            raise SuiteError(
                f"{path}: task {task_id!r} should list exactly the files {list(TASK_FILES)} with their SHA-256; "
                "restore the suite folder or retrain this task."
            )
        if entry.get("shared") is not None and entry["shared"] not in manifest.get("shared", {}):
            raise SuiteError(
                f"{path}: task {task_id!r} refers to shared module {entry['shared']!r}, which is not listed; restore "
                "the suite folder."
            )
    for name, entry in manifest.get("shared", {}).items():
        try:
            check_id(name, "shared module name")
        except ConfigError as exc:
            raise SuiteError(f"{path}: {exc} This manifest is not trusted.") from None
        if not isinstance(entry, dict) or entry.get("file") != f"{SHARED_DIR}/{name}.safetensors":
            raise SuiteError(
                f"{path}: shared module {name!r} must be stored as {SHARED_DIR}/{name}.safetensors inside the suite; "
                "this manifest is not trusted: restore the suite from its source."
            )


def _load_tensors(data: bytes, what: str) -> dict:
    from safetensors.torch import load as load_safetensors

    try:
        return load_safetensors(data)
    except Exception as exc:  # the hash matched, so the file was written broken (or is not safetensors at all)
        raise SuiteError(f"{what} is not a readable safetensors file ({exc}); restore or retrain it.") from exc


class Suite:
    """A suite folder. Create with :meth:`create`, open with :meth:`open`; change it only through :meth:`edit`."""

    def __init__(self, root: Path, manifest: dict[str, Any], *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.cache_bytes = cache_bytes
        self._lexical_cache: dict[tuple[str, str, str], Any] = {}
        self.hash_counts: Counter[str] = Counter()
        """How many times each file (path relative to the root) was hash-checked by this object."""
        self._cache: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()  # (file, sha256) -> (parsed, bytes)

    # -- the trust boundary -------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        """``root / parts`` resolved, SuiteError if it lies outside the suite folder (``..``, absolute, links)."""
        root = self.root.resolve()
        target = root.joinpath(*parts).resolve()
        if target != root and root not in target.parents:
            raise SuiteError(
                f"{'/'.join(parts)!r} points outside the suite folder {self.root}; a suite may only refer to its own "
                "files. This suite is not trusted: restore it from its source."
            )
        return target

    # -- writing: one locked writer ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Hold an exclusive ``flock`` on the suite folder (waits up to :data:`LOCK_TIMEOUT_S` seconds)."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise SuiteError(
                            f"another process has held the suite at {self.root} for over {LOCK_TIMEOUT_S:.0f} s; "
                            "wait for it to finish, or stop it."
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """Change the manifest: ``with suite.edit() as m: m[...] = ...``.

        Holds the suite's file lock from re-reading ``manifest.json`` (so changes made meanwhile by another process
        are kept) to its atomic replacement; ``self.manifest`` is the written version afterwards. An exception in the
        block writes nothing.
        """
        with self._lock():
            path = self.root / MANIFEST_FILE
            fresh = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else copy.deepcopy(self.manifest)
            _check_manifest(fresh, path)
            yield fresh
            fresh["updated"] = _now()
            write_json_atomic(path, fresh)
            self.manifest = fresh

    @classmethod
    def create(
        cls,
        root: str | os.PathLike[str],
        *,
        method: str,
        backbone: dict[str, Any],
        pooling: str,
        max_length: int,
        exist_ok: bool = True,
        long_inputs: dict[str, Any] | None = None,
    ) -> Suite:
        """Start a suite folder, or reopen a compatible unfinished one (so training can resume).

        ``long_inputs``: the suite's :class:`~scoreplex.encoding.LongInputs` record (None: truncate, stored as
        absent so that truncating suites keep their manifest as before)."""
        root = Path(root)
        suite = cls(root, {})
        with suite._lock():
            if (root / MANIFEST_FILE).is_file():
                if not exist_ok:
                    raise SuiteError(f"{root} already holds a suite; choose another folder or remove it.")
                suite = cls.open(root, verify=False)
                m = suite.manifest
                clash = {
                    k: (m.get(k), v)
                    for k, v in (("method", method), ("pooling", pooling), ("max_length", max_length))
                    if m.get(k) != v
                }
                if m.get("long_inputs") != long_inputs:
                    clash["long_inputs"] = (m.get("long_inputs"), long_inputs)
                if m["backbone"]["sha256"] != backbone["sha256"]:
                    clash["backbone"] = (m["backbone"]["name"], backbone["name"])
                if clash:
                    old, new = clash.get("long_inputs") or (None, None)
                    hint = ""
                    if len(clash) == 1 and old and new and {**old, "pool": new.get("pool")} == new:
                        hint = f" (to add to it, train with --window-pool {old.get('pool', 'mean')})"
                    raise SuiteError(
                        f"{root} holds a suite trained with different settings {clash} (existing, requested); "
                        f"write to a new folder or delete the old one{hint}."
                    )
                return suite
            suite.manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "created": _now(),
                "method": method,
                "backbone": backbone,
                "pooling": pooling,
                "max_length": max_length,
                **({"long_inputs": long_inputs} if long_inputs is not None else {}),
                "versions": package_versions(),
                "tasks": {},
            }
            write_json_atomic(root / MANIFEST_FILE, suite.manifest)
        return suite

    def update(self, **fields: Any) -> None:
        """Set top-level manifest fields (e.g. ``merge=...``, ``moe=...``) through the locked writer."""
        with self.edit() as m:
            m.update(fields)

    def add_shared(self, name: str, tensors: dict, meta: dict[str, Any] | None = None) -> None:
        """Write a module several tasks share (e.g. one merged encoder per group of merged tasks).

        Tasks name it with ``add_task(..., shared=name)``; their method joins it to their own tensors on load.
        """
        from safetensors.torch import save_file

        try:
            check_id(name, "shared module name")
        except ConfigError as exc:
            raise SuiteError(f"{exc} E.g. 'group-0'.") from None
        path = self.path(SHARED_DIR, f"{name}.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.safetensors.{os.getpid()}.tmp")
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"shared": name})
        os.replace(tmp, path)
        entry = {"file": f"{SHARED_DIR}/{name}.safetensors", "sha256": sha256_file(path), "bytes": path.stat().st_size}
        with self.edit() as m:
            m.setdefault("shared", {})[name] = {**entry, **(meta or {})}

    def add_task(
        self,
        spec: TaskSpec,
        tensors: dict,
        config: dict[str, Any],
        summary: dict[str, Any],
        *,
        shared: str | None = None,
        decoding: dict[str, Any] | None = None,
        lexical: dict[str, Any] | None = None,
    ) -> None:
        """Write one task's module and record it in the manifest (replacing an existing one of the same id).

        ``shared`` names a module written by :meth:`add_shared` that this task's tensors complete; ``decoding`` is
        its :class:`scoreplex.decoding.Decoding` as a dict (calibration, decoding rule, routing threshold);
        ``lexical`` the record of a stacked lexical model (:mod:`scoreplex.stacking`) whose ``lexical.*`` tensors are
        among ``tensors``.
        """
        from safetensors.torch import save_file

        check_id(spec.id, "task id")
        if shared is not None and shared not in self.manifest.get("shared", {}):
            raise SuiteError(f"task {spec.id!r} refers to shared module {shared!r}, which this suite does not hold.")
        folder = self.path("tasks", spec.id)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{MODULE_FILE}.{os.getpid()}.tmp"
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"task": spec.id})
        os.replace(tmp, folder / MODULE_FILE)
        info = {"spec": spec.to_dict(), "method": self.manifest["method"], "config": config, "summary": summary}
        if decoding is not None:
            info["decoding"] = decoding
        if lexical is not None:
            info["lexical"] = lexical
        write_json_atomic(folder / TASK_FILE, info)
        files = {name: sha256_file(folder / name) for name in TASK_FILES}
        entry = {
            "files": files,
            "bytes": sum((folder / n).stat().st_size for n in files),
            "metrics": summary.get("metrics", {}),
        }
        if shared is not None:
            entry["shared"] = shared
        with self.edit() as m:
            m["tasks"][spec.id] = entry

    def remove_task(self, task_id: str) -> None:
        """Drop a task: the manifest first (atomically), then its folder, so a crash in between leaves only an
        orphan folder, never a manifest entry without files."""
        import shutil

        self._entry(task_id)
        try:
            check_id(task_id, "task id")
        except ConfigError as exc:
            raise SuiteError(f"{exc} Nothing was removed.") from None
        folder = self.path("tasks", task_id)
        orphan_file = None
        with self.edit() as m:
            entry = m["tasks"].pop(task_id, None)
            shared = (entry or {}).get("shared")
            if shared is not None and not any(e.get("shared") == shared for e in m["tasks"].values()):
                orphan_file = self.path(m["shared"].pop(shared)["file"])
        shutil.rmtree(folder, ignore_errors=True)
        if orphan_file is not None:
            orphan_file.unlink(missing_ok=True)

    # -- opening ------------------------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, root: str | os.PathLike[str], *, verify: bool = True, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> Suite:
        """Open a suite folder; its manifest is checked against the format. ``verify`` also reads, hash-checks and
        parses every file now (they stay cached within ``cache_bytes``); otherwise each is checked on first use."""
        root = Path(root)
        path = root / MANIFEST_FILE
        if not path.is_file():
            raise SuiteError(f"{root} is not a scoreplex suite (no manifest.json); train one with `scoreplex train`.")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SuiteError(f"{path} is corrupt ({exc}); restore it or retrain the suite.") from exc
        _check_manifest(manifest, path)
        suite = cls(root, manifest, cache_bytes=cache_bytes)
        if verify:
            for task_id in suite.task_ids:
                suite.verify_task(task_id)
            for name in manifest.get("shared", {}):
                suite.verify_shared(name)
        return suite

    # -- what the suite holds -----------------------------------------------------------------------------------------
    @property
    def task_ids(self) -> list[str]:
        return list(self.manifest["tasks"])

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def method_object(self):
        """The registered :class:`~scoreplex.methods.base.Method` of this suite (UnknownNameError if none)."""
        from scoreplex.methods import get_method

        return get_method(self.method)

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def long_inputs(self):
        """How responses longer than ``max_length`` are encoded (:class:`~scoreplex.encoding.LongInputs`; truncate
        when the manifest has no ``long_inputs``). SuiteError for a record this scoreplex cannot read."""
        from scoreplex.encoding import LongInputs

        try:
            long_inputs = LongInputs.from_dict(self.manifest.get("long_inputs"))
            long_inputs.step(self.max_length)  # a stride longer than a window
            return long_inputs
        except (ConfigError, TypeError) as exc:
            raise SuiteError(
                f"{self.root / MANIFEST_FILE}: field 'long_inputs' is not readable ({exc}); restore the manifest."
            ) from None

    @property
    def pooling(self) -> str:
        return str(self.manifest["pooling"])

    def has_task(self, task_id: str) -> bool:
        return task_id in self.manifest["tasks"]

    def _entry(self, task_id: str) -> dict[str, Any]:
        if task_id not in self.manifest["tasks"]:
            raise UnknownTaskError(
                f"task {task_id!r} is not in the suite at {self.root}; it holds: {', '.join(self.task_ids) or 'none'}."
            )
        return self.manifest["tasks"][task_id]

    def shared_of(self, task_id: str) -> str | None:
        """The shared module a task's tensors complete, if any."""
        return self._entry(task_id).get("shared")

    # -- reading: once per process, verified ---------------------------------------------------------------------------
    def _read(self, rel: str, digest: str, what: str, parse) -> Any:
        """Read ``rel`` once: bytes -> SHA-256 check -> ``parse(bytes)``, cached by (file, digest)."""
        key = (rel, digest)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit[0]
        path = self.path(*rel.split("/"))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SuiteError(f"{what}: {path} is missing; restore the suite folder or retrain it.") from None
        except OSError as exc:
            raise SuiteError(f"{what}: cannot read {path} ({exc}).") from exc
        self.hash_counts[rel] += 1
        if hashlib.sha256(data).hexdigest() != digest:
            raise SuiteError(
                f"{what}: {path} does not match its SHA-256 in manifest.json (corrupt or edited); restore it or "
                "retrain it."
            )
        parsed = parse(data)
        self._cache[key] = (parsed, len(data))
        total = sum(n for _, n in self._cache.values())
        while total > self.cache_bytes and len(self._cache) > 1:
            _, (_, n) = self._cache.popitem(last=False)
            total -= n
        return parsed

    def task_info(self, task_id: str) -> dict[str, Any]:
        """The task's ``task.json`` (spec, method, config, summary), verified."""
        entry = self._entry(task_id)

        def parse(data: bytes) -> dict[str, Any]:
            try:
                info = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise SuiteError(
                    f"task {task_id!r}: {TASK_FILE} is not valid JSON ({exc}); retrain this task."
                ) from None
            if not isinstance(info, dict) or not isinstance(info.get("spec"), dict):
                raise SuiteError(f"task {task_id!r}: {TASK_FILE} has no 'spec' object; retrain this task.")
            if not isinstance(info.get("config", {}), dict):
                raise SuiteError(f"task {task_id!r}: {TASK_FILE} field 'config' must be an object; retrain this task.")
            return info

        return self._read(f"tasks/{task_id}/{TASK_FILE}", entry["files"][TASK_FILE], f"task {task_id!r}", parse)

    def decoding(self, task_id: str):
        """The task's :class:`scoreplex.decoding.Decoding` (argmax at temperature 1, all automated, when its module
        holds none); SuiteError naming the task when the stored one is invalid."""
        from scoreplex.decoding import Decoding

        return Decoding.from_dict(self.task_info(task_id).get("decoding"), self.spec(task_id))

    def set_decoding(self, task_id: str, decoding) -> None:
        """Store (or with None, drop) a task's :class:`scoreplex.decoding.Decoding` in its ``task.json``: rewritten
        atomically and re-hashed in the manifest, under the suite's lock."""
        folder = self.path("tasks", task_id)
        with self.edit() as m:
            entry = m["tasks"].get(task_id)
            if entry is None:
                raise UnknownTaskError(f"task {task_id!r} is not in the suite at {self.root}.")
            self.manifest = m  # task_info checks against the freshly read hashes
            info = dict(self.task_info(task_id))
            if decoding is None:
                info.pop("decoding", None)
            else:
                info["decoding"] = decoding.to_dict()
            write_json_atomic(folder / TASK_FILE, info)
            entry["files"][TASK_FILE] = sha256_file(folder / TASK_FILE)
            entry["bytes"] = sum((folder / n).stat().st_size for n in TASK_FILES)

    def spec(self, task_id: str) -> TaskSpec:
        info = self.task_info(task_id)  # UnknownTaskError / SuiteError pass through
        try:
            spec = TaskSpec.from_dict(info["spec"])
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise SuiteError(
                f"task {task_id!r}: the spec in {TASK_FILE} is invalid ({exc}); retrain this task."
            ) from None
        if spec.id != task_id:
            raise SuiteError(f"task {task_id!r}: its {TASK_FILE} describes task {spec.id!r}; restore the suite folder.")
        return spec

    def module_tensors(self, task_id: str, *, lexical: bool = False) -> dict:
        """The task's own tensors (its ``module.safetensors``), verified: the neural ones, or with ``lexical`` also
        those of its stacked lexical model (``lexical.*``, :mod:`scoreplex.stacking`). Do not modify them in place:
        they are shared by every consumer in this process."""
        digest = self._entry(task_id)["files"][MODULE_FILE]
        what = f"task {task_id!r}"
        tensors = self._read(f"tasks/{task_id}/{MODULE_FILE}", digest, what, lambda b: _load_tensors(b, what))
        if lexical:
            return tensors
        return {k: v for k, v in tensors.items() if not k.startswith("lexical.")}

    def lexical(self, task_id: str):
        """The task's stacked lexical model (:class:`scoreplex.stacking.LexicalStack`) or None; built once per
        module version; SuiteError naming the task when it is inconsistent."""
        from scoreplex.stacking import LexicalStack, split_tensors

        info = self.task_info(task_id)
        if info.get("lexical") is None:
            return None
        key = (task_id, self._entry(task_id)["files"][MODULE_FILE], self._entry(task_id)["files"][TASK_FILE])
        if key not in self._lexical_cache:
            _, tensors = split_tensors(self.module_tensors(task_id, lexical=True))
            self._lexical_cache[key] = LexicalStack.from_module(self.spec(task_id), tensors, info["lexical"])
        return self._lexical_cache[key]

    def set_lexical(self, task_id: str, stack) -> None:
        """Store (or with None, drop) a task's stacked lexical model: its module file and ``task.json`` are rewritten
        atomically and re-hashed, under the suite's lock."""
        from safetensors.torch import save_file

        folder = self.path("tasks", task_id)
        with self.edit() as m:
            entry = m["tasks"].get(task_id)
            if entry is None:
                raise UnknownTaskError(f"task {task_id!r} is not in the suite at {self.root}.")
            self.manifest = m
            info = dict(self.task_info(task_id))
            tensors = dict(self.module_tensors(task_id))  # the neural ones
            if stack is None:
                info.pop("lexical", None)
            else:
                lexical_tensors, info["lexical"] = stack.record()
                tensors.update(lexical_tensors)
            tmp = folder / f".{MODULE_FILE}.{os.getpid()}.tmp"
            save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"task": task_id})
            os.replace(tmp, folder / MODULE_FILE)
            write_json_atomic(folder / TASK_FILE, info)
            entry["files"] = {name: sha256_file(folder / name) for name in TASK_FILES}
            entry["bytes"] = sum((folder / n).stat().st_size for n in TASK_FILES)

    def shared_tensors(self, name: str) -> dict:
        """Tensors of one shared module, verified (read once per process)."""
        entry = self.manifest.get("shared", {}).get(name)
        if entry is None:
            raise SuiteError(f"shared module {name!r} is not in the suite at {self.root}.")
        what = f"shared module {name!r}"
        return self._read(entry["file"], entry["sha256"], what, lambda b: _load_tensors(b, what))

    load_shared = shared_tensors  # the name earlier versions used

    def load_module(self, task_id: str) -> tuple[dict[str, Any], dict]:
        """``(task_info, tensors)`` of one task as its model needs them (its method joins a shared module in)."""
        tensors = self.method_object.task_tensors(self, task_id)
        return self.task_info(task_id), tensors

    def verify_task(self, task_id: str) -> None:
        """Read and hash-check the task's files now (SuiteError naming the task if one is missing or differs)."""
        self.task_info(task_id)
        self.module_tensors(task_id)

    def verify_shared(self, name: str) -> None:
        self.shared_tensors(name)

    def check_backbone(self, fingerprint: str, name: str = "") -> None:
        want = self.manifest["backbone"]
        if fingerprint != want["sha256"]:
            raise BackboneMismatchError(
                f"the suite at {self.root} was trained on backbone {want.get('name')!r} "
                f"(sha256 {want['sha256'][:12]}...) "
                f"but {name or 'the given backbone'} has sha256 {fingerprint[:12]}...; load it with the same backbone "
                "or retrain the suite."
            )

    def task_bytes(self, task_id: str) -> int:
        """Bytes of the task's own files (a shared module it uses is counted by :attr:`total_bytes` once)."""
        return int(self._entry(task_id).get("bytes", 0))

    @property
    def total_bytes(self) -> int:
        """Bytes of the whole folder (manifest and every task), excluding training checkpoints."""
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file() and ".checkpoints" not in f.parts)

    @property
    def model_bytes(self) -> int:
        """Bytes a deployment stores: ``manifest.json``, every task's own files and every shared module, as the
        manifest records them. Unlike :attr:`total_bytes` it leaves out anything else in the folder (reports,
        training checkpoints, stray files), so it is the figure to compare suites by (e.g. a merge's storage ratio)."""
        manifest = self.path(MANIFEST_FILE).stat().st_size
        tasks = sum(self.task_bytes(t) for t in self.task_ids)
        shared = sum(int(e.get("bytes", 0)) for e in self.manifest.get("shared", {}).values())
        return manifest + tasks + shared
