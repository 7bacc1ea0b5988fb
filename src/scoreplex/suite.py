"""A suite: one deployable folder holding every task's module for one backbone.

Layout::

    suite/
      manifest.json                 backbone identity + hash, method, pooling, max_length, tasks, versions, metrics
      tasks/<task id>/task.json     the TaskSpec, the method's module config, training summary
      tasks/<task id>/module.safetensors   the task's tensors (LoRA A/B + head, a head, or a whole encoder + head)
      shared/<name>.safetensors     tensors several tasks share (a merged group's encoder); optional

Every file is written to a temporary name and renamed into place, and the manifest is rewritten after each task,
so an interrupted training run leaves a loadable suite of the tasks finished so far. Loading checks each file's
SHA-256 against the manifest and refuses a backbone whose fingerprint differs from the one the suite was trained on.
No pickle: tensors are safetensors, everything else JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from scoreplex.errors import BackboneMismatchError, SuiteError, UnknownTaskError
from scoreplex.tasks import TaskSpec

FORMAT = "scoreplex-suite"
FORMAT_VERSION = 1
MODULE_FILE = "module.safetensors"
TASK_FILE = "task.json"
SHARED_DIR = "shared"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
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


class Suite:
    """A suite folder. Create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest

    # -- creating -----------------------------------------------------------------------------------------------
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
    ) -> Suite:
        """Start a suite folder, or reopen a compatible unfinished one (so training can resume)."""
        root = Path(root)
        if (root / "manifest.json").is_file():
            if not exist_ok:
                raise SuiteError(f"{root} already holds a suite; choose another folder or remove it.")
            suite = cls.open(root, verify=False)
            m = suite.manifest
            clash = {
                k: (m.get(k), v)
                for k, v in (("method", method), ("pooling", pooling), ("max_length", max_length))
                if m.get(k) != v
            }
            if m["backbone"]["sha256"] != backbone["sha256"]:
                clash["backbone"] = (m["backbone"]["name"], backbone["name"])
            if clash:
                raise SuiteError(
                    f"{root} holds a suite trained with different settings {clash} (existing, requested); "
                    "write to a new folder or delete the old one."
                )
            return suite
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "method": method,
            "backbone": backbone,
            "pooling": pooling,
            "max_length": max_length,
            "versions": package_versions(),
            "tasks": {},
        }
        write_json_atomic(root / "manifest.json", manifest)
        return cls(root, manifest)

    def add_shared(self, name: str, tensors: dict, meta: dict[str, Any] | None = None) -> None:
        """Write a module several tasks share (e.g. one merged encoder per group of merged tasks).

        Tasks name it with ``add_task(..., shared=name)``; :meth:`load_module` then returns the shared tensors together
        with the task's own, so every loader (scorer, CLI, engine) reads a merged suite like any other.
        """
        from safetensors.torch import save_file

        if not name or "/" in name or name.startswith("."):
            raise SuiteError(f"shared module name {name!r} must be a plain file stem such as 'group-0'.")
        folder = self.root / SHARED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.safetensors"
        tmp = folder / f".{name}.safetensors.tmp"
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"shared": name})
        os.replace(tmp, path)
        self._shared_cache = None
        self.manifest.setdefault("shared", {})[name] = {
            "file": f"{SHARED_DIR}/{name}.safetensors",
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            **(meta or {}),
        }
        write_json_atomic(self.root / "manifest.json", self.manifest)

    def add_task(
        self,
        spec: TaskSpec,
        tensors: dict,
        config: dict[str, Any],
        summary: dict[str, Any],
        *,
        shared: str | None = None,
    ) -> None:
        """Write one task's module and record it in the manifest (replacing an existing one of the same id).

        ``shared`` names a module written by :meth:`add_shared` that this task's tensors complete.
        """
        from safetensors.torch import save_file

        if shared is not None and shared not in self.manifest.get("shared", {}):
            raise SuiteError(f"task {spec.id!r} refers to shared module {shared!r}, which this suite does not hold.")

        folder = self.root / "tasks" / spec.id
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{MODULE_FILE}.tmp"
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"task": spec.id})
        os.replace(tmp, folder / MODULE_FILE)
        write_json_atomic(
            folder / TASK_FILE,
            {"spec": spec.to_dict(), "method": self.manifest["method"], "config": config, "summary": summary},
        )
        files = {name: sha256_file(folder / name) for name in (MODULE_FILE, TASK_FILE)}
        self.manifest["tasks"][spec.id] = {
            "files": files,
            "bytes": sum((folder / n).stat().st_size for n in files),
            "metrics": summary.get("metrics", {}),
        }
        if shared is not None:
            self.manifest["tasks"][spec.id]["shared"] = shared
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json_atomic(self.root / "manifest.json", self.manifest)

    def remove_task(self, task_id: str) -> None:
        """Drop a task: the manifest first (atomically), then its folder, so a crash in between leaves only an
        orphan folder, never a manifest entry without files."""
        import shutil

        shared = self._entry(task_id).get("shared")
        del self.manifest["tasks"][task_id]
        orphan = shared is not None and not any(e.get("shared") == shared for e in self.manifest["tasks"].values())
        if orphan:
            entry = self.manifest["shared"].pop(shared)
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json_atomic(self.root / "manifest.json", self.manifest)
        shutil.rmtree(self.root / "tasks" / task_id, ignore_errors=True)
        if orphan:
            self._shared_cache = None
            (self.root / entry["file"]).unlink(missing_ok=True)

    # -- reading ------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike[str], *, verify: bool = True) -> Suite:
        root = Path(root)
        path = root / "manifest.json"
        if not path.is_file():
            raise SuiteError(f"{root} is not a scoreplex suite (no manifest.json); train one with `scoreplex train`.")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{path} is corrupt ({exc}); restore it or retrain the suite.") from exc
        if manifest.get("format") != FORMAT or manifest.get("format_version", 0) > FORMAT_VERSION:
            raise SuiteError(
                f"{path} is format {manifest.get('format')!r} v{manifest.get('format_version')}; this scoreplex reads "
                f"{FORMAT!r} up to v{FORMAT_VERSION}. Upgrade scoreplex or retrain."
            )
        suite = cls(root, manifest)
        if verify:
            for task_id in suite.task_ids:
                suite.verify_task(task_id)
            for name in manifest.get("shared", {}):
                suite.verify_shared(name)
        return suite

    @property
    def task_ids(self) -> list[str]:
        return list(self.manifest["tasks"])

    @property
    def method(self) -> str:
        return self.manifest["method"]

    def has_task(self, task_id: str) -> bool:
        return task_id in self.manifest["tasks"]

    def _entry(self, task_id: str) -> dict[str, Any]:
        if task_id not in self.manifest["tasks"]:
            raise UnknownTaskError(
                f"task {task_id!r} is not in the suite at {self.root}; it holds: {', '.join(self.task_ids) or 'none'}."
            )
        return self.manifest["tasks"][task_id]

    def verify_task(self, task_id: str) -> None:
        folder = self.root / "tasks" / task_id
        for name, digest in self._entry(task_id)["files"].items():
            f = folder / name
            if not f.is_file():
                raise SuiteError(f"task {task_id!r}: {f} is missing; restore the suite folder or retrain this task.")
            if sha256_file(f) != digest:
                raise SuiteError(
                    f"task {task_id!r}: {f} does not match its SHA-256 in manifest.json (corrupt or edited); "
                    "restore it or retrain this task."
                )

    def verify_shared(self, name: str) -> None:
        entry = self.manifest.get("shared", {}).get(name)
        if entry is None:
            raise SuiteError(f"shared module {name!r} is not in the suite at {self.root}.")
        f = self.root / entry["file"]
        if not f.is_file():
            raise SuiteError(f"shared module {name!r}: {f} is missing; restore the suite folder or redo the merge.")
        if sha256_file(f) != entry["sha256"]:
            raise SuiteError(
                f"shared module {name!r}: {f} does not match its SHA-256 in manifest.json (corrupt or edited); "
                "restore it or redo the merge."
            )

    def load_shared(self, name: str, *, verify: bool = True) -> dict:
        """Tensors of one shared module (the most recently read one is kept in memory)."""
        from safetensors.torch import load_file

        cached = getattr(self, "_shared_cache", None)
        if cached is not None and cached[0] == name:
            return cached[1]
        if verify:
            self.verify_shared(name)
        tensors = load_file(str(self.root / self.manifest["shared"][name]["file"]))
        self._shared_cache = (name, tensors)
        return tensors

    def shared_of(self, task_id: str) -> str | None:
        """The shared module a task's tensors complete, if any."""
        return self._entry(task_id).get("shared")

    def task_info(self, task_id: str) -> dict[str, Any]:
        self._entry(task_id)
        return json.loads((self.root / "tasks" / task_id / TASK_FILE).read_text(encoding="utf-8"))

    def spec(self, task_id: str) -> TaskSpec:
        return TaskSpec.from_dict(self.task_info(task_id)["spec"])

    def load_module(self, task_id: str, *, verify: bool = True) -> tuple[dict[str, Any], dict]:
        """``(task_info, tensors)`` of one task, after checking its hashes; a task of a merged group gets its group's
        shared tensors together with its own."""
        from safetensors.torch import load_file

        if verify:
            self.verify_task(task_id)
        tensors = load_file(str(self.root / "tasks" / task_id / MODULE_FILE))
        shared = self.shared_of(task_id)
        if shared is not None:
            tensors = {**self.load_shared(shared, verify=verify), **tensors}
        return self.task_info(task_id), tensors

    def check_backbone(self, fingerprint: str, name: str = "") -> None:
        want = self.manifest["backbone"]
        if fingerprint != want["sha256"]:
            raise BackboneMismatchError(
                f"the suite at {self.root} was trained on backbone {want['name']!r} (sha256 {want['sha256'][:12]}...) "
                f"but {name or 'the given backbone'} has sha256 {fingerprint[:12]}...; load it with the same backbone "
                "or retrain the suite."
            )

    def task_bytes(self, task_id: str) -> int:
        """Bytes of the task's own files (a shared module it uses is counted by :attr:`total_bytes` once)."""
        return int(self._entry(task_id)["bytes"])

    @property
    def total_bytes(self) -> int:
        """Bytes of the whole folder (manifest and every task), excluding training checkpoints."""
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file() and ".checkpoints" not in f.parts)
