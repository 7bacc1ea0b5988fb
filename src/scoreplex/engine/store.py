"""Task modules of a suite, loaded on demand and kept in an LRU cache under a budget (task count and/or bytes).

A module is read the first time a task is used, through the suite (:meth:`scoreplex.suite.Suite.module_tensors`:
read once per process, checked against the SHA-256 in ``manifest.json`` and parsed from those same bytes), and parsed
into its parts by the suite's method (:meth:`scoreplex.methods.base.Method.parse`). A module that is missing, corrupt
or does not fit fails with a :class:`~scoreplex.errors.SuiteError` naming its task; nothing is kept for it, so other
tasks keep serving and a restored file is picked up by the next request.

Tasks can be added, replaced and removed while the engine serves (all under one lock shared with the engine). A
module in use by a running batch is *pinned*: it is never evicted under that batch; replacing or removing it retires
it once the batch releases it.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from scoreplex.decoding import Decoding
from scoreplex.errors import ConfigError, ScoreplexError, SuiteError, UnknownTaskError
from scoreplex.heads import ScoringHead
from scoreplex.methods.base import MODULE_FIX, check_window_pool, task_module_error
from scoreplex.stacking import LexicalStack, split_tensors
from scoreplex.suite import MODULE_FILE, Suite
from scoreplex.tasks import TaskSpec


@dataclass(eq=False)
class ResidentModule:
    """One task's module resident in the engine: its rubric, head and (for LoRA suites) adapter weights."""

    task_id: str
    spec: TaskSpec
    config: dict[str, Any]
    head: ScoringHead
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """``{encoder layer name: (A (r, in), B (out, r))}``; empty for head-only suites. The engine copies it into its
    slot tables on load and then drops it here, so the adapter weights are held once."""
    scaling: float
    """``lora_alpha / lora_r`` (0 without LoRA)."""
    rank: int
    nbytes: int
    """Bytes of the module's tensors (what counts against the store's byte budget)."""
    load_seconds: float
    """Wall time of the cold load: read, hash check, parse, head build and the engine's install."""
    sha256: str
    slot: int = -1
    """Slot in the engine's MultiLoRA tables (-1: none)."""
    task_vec: torch.Tensor | None = None
    """A MoE student's task embedding (None for other suites)."""
    key: str = ""
    """Unique name of this loaded instance (``task#n``): a replaced task's old and new modules never share it."""
    decoding: Decoding | None = None
    """The task's calibration, decoding rule and routing threshold (None: argmax, all automated)."""
    lexical: LexicalStack | None = None
    """The task's stacked lexical model (:mod:`scoreplex.stacking`), None without one."""
    pins: int = field(default=0, repr=False)
    retired: bool = field(default=False, repr=False)


class AdapterStore:
    """Lazily loaded task modules of one suite, in an LRU cache under ``max_tasks`` and/or ``max_bytes``.

    ``on_load(module)`` runs after a module is parsed and before it is cached (the engine installs its adapters
    there; an exception fails the load); ``on_evict(module)`` runs when a module leaves the cache; ``on_check(module)``
    checks a module against the engine's encoder before :meth:`add` writes anything (SuiteError if it does not fit).
    A single batch may
    need more tasks than the budget holds: they are all kept (pinned) for that batch and the budget is restored as
    soon as it ends. The module just handed out is never evicted by its own load, so one module larger than
    ``max_bytes`` still serves (it leaves on the next load).
    """

    def __init__(
        self,
        suite: Suite | str | os.PathLike[str],
        *,
        hidden: int,
        max_tasks: int | None = None,
        max_bytes: int | None = None,
        on_load: Callable[[ResidentModule], None] | None = None,
        on_evict: Callable[[ResidentModule], None] | None = None,
        on_check: Callable[[ResidentModule], None] | None = None,
        lock: threading.RLock | None = None,
    ) -> None:
        if max_tasks is not None and (not isinstance(max_tasks, int) or max_tasks < 1):
            raise ConfigError(f"max_tasks={max_tasks!r}; give a task count >= 1, or None for no count limit.")
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
            raise ConfigError(f"max_bytes={max_bytes!r}; give a positive byte count, or None for no byte limit.")
        self.suite = suite if isinstance(suite, Suite) else Suite.open(suite, verify=False)
        self.method = self.suite.method_object
        self.hidden = hidden
        self.max_tasks = max_tasks
        self.max_bytes = max_bytes
        self.on_load = on_load
        self.on_evict = on_evict
        self.on_check = on_check
        self.lock = lock or threading.RLock()
        self._cache: OrderedDict[str, ResidentModule] = OrderedDict()  # least recently used first
        self.load_seconds: dict[str, list[float]] = {}
        """Every cold-load time per task, in seconds (for cold-load latency figures)."""
        self.counters = {"hits": 0, "misses": 0, "evictions": 0, "failures": 0}
        self._generation = itertools.count()

    # -- what the suite holds ----------------------------------------------------------------------------------------
    @property
    def task_ids(self) -> list[str]:
        return self.suite.task_ids

    def __contains__(self, task_id: object) -> bool:
        return isinstance(task_id, str) and self.suite.has_task(task_id)

    def _require(self, task_id: str) -> dict[str, Any]:
        if not self.suite.has_task(task_id):
            raise UnknownTaskError(
                f"task {task_id!r} is not in the suite at {self.suite.root}; it holds: "
                f"{', '.join(self.suite.task_ids) or 'none'}. Add it with AdapterStore.add or import_task."
            )
        return self.suite.manifest["tasks"][task_id]

    # -- the cache ---------------------------------------------------------------------------------------------------
    @property
    def resident(self) -> list[str]:
        """Task ids in memory, least recently used first."""
        with self.lock:
            return list(self._cache)

    @property
    def resident_bytes(self) -> int:
        with self.lock:
            return sum(m.nbytes for m in self._cache.values())

    def get(self, task_id: str) -> ResidentModule:
        """The task's module, loaded (and verified) on first use; marks it most recently used."""
        with self.lock:
            module = self._cache.get(task_id)
            if module is not None:
                self._cache.move_to_end(task_id)
                self.counters["hits"] += 1
                return module
            self.counters["misses"] += 1
            t0 = time.perf_counter()
            try:
                module = self._load(task_id)
                module.key = f"{task_id}#{next(self._generation)}"
                if self.on_load is not None:
                    self.on_load(module)
            except ScoreplexError:
                self.counters["failures"] += 1
                raise
            module.load_seconds = time.perf_counter() - t0
            self.load_seconds.setdefault(task_id, []).append(module.load_seconds)
            module.lora = {}  # installed by on_load (or unused): keep the adapter weights once
            self._cache[task_id] = module
            module.pins += 1  # never evict the module being handed out (the most recent one always stays)
            try:
                self._evict_over_budget()
            finally:
                module.pins -= 1
            return module

    @contextmanager
    def pinned(self, task_ids: Iterable[str], errors: dict[str, ScoreplexError] | None = None) -> Iterator[dict]:
        """Load and pin ``task_ids`` for one batch: yields ``{task id: ResidentModule}``.

        A task that fails to load raises; with ``errors`` given, its error is recorded there instead and the task is
        left out. The budget is enforced again when the block ends.
        """
        modules: dict[str, ResidentModule] = {}
        with self.lock:
            try:
                for task_id in dict.fromkeys(task_ids):
                    try:
                        module = self.get(task_id)
                    except ScoreplexError as exc:
                        if errors is None:
                            raise
                        errors[task_id] = exc
                        continue
                    module.pins += 1
                    modules[task_id] = module
            except BaseException:
                self._unpin(modules.values())
                raise
        try:
            yield modules
        finally:
            with self.lock:
                self._unpin(modules.values())

    def _unpin(self, modules: Iterable[ResidentModule]) -> None:
        for module in modules:
            module.pins -= 1
            if module.retired and module.pins == 0:
                self._release(module)
        self._evict_over_budget()

    def _over_budget(self) -> bool:
        return (self.max_tasks is not None and len(self._cache) > self.max_tasks) or (
            self.max_bytes is not None and sum(m.nbytes for m in self._cache.values()) > self.max_bytes
        )

    def _evict_over_budget(self) -> None:
        for task_id in list(self._cache):  # least recently used first
            if not self._over_budget():
                return
            if self._cache[task_id].pins == 0:
                self.evict(task_id)

    def evict(self, task_id: str) -> bool:
        """Drop a task's module from memory (it reloads on next use); False if it was not resident."""
        with self.lock:
            module = self._cache.pop(task_id, None)
            if module is None:
                return False
            self.counters["evictions"] += 1
            module.retired = True
            if module.pins == 0:
                self._release(module)
            return True

    def _release(self, module: ResidentModule) -> None:
        if self.on_evict is not None:
            self.on_evict(module)

    def clear(self) -> None:
        with self.lock:
            for task_id in list(self._cache):
                self.evict(task_id)

    # -- loading -----------------------------------------------------------------------------------------------------
    def _load(self, task_id: str) -> ResidentModule:
        files = self._require(task_id)["files"]
        info = self.suite.task_info(task_id)
        tensors = self.method.task_tensors(self.suite, task_id, for_engine=True)
        module = self.parse(task_id, self.suite.spec(task_id), info.get("config", {}), tensors)
        try:
            module.decoding = self.suite.decoding(task_id)
            module.lexical = self.suite.lexical(task_id)
        except ScoreplexError as exc:
            raise task_module_error(task_id, exc) from exc
        module.sha256 = files[MODULE_FILE]
        return module

    def parse(self, task_id: str, spec: dict | TaskSpec, config: dict[str, Any], tensors: dict) -> ResidentModule:
        """Build a ResidentModule from a task's spec, module config and tensors with the suite's method; SuiteError
        naming the task if they do not fit (used on load, and on add before anything is written)."""
        try:
            if not isinstance(spec, TaskSpec):
                try:
                    spec = TaskSpec.from_dict(spec)
                except (ScoreplexError, KeyError, TypeError, ValueError) as exc:
                    raise SuiteError(f"its spec is invalid ({exc}); {MODULE_FIX}.") from None
            if spec.id != task_id:
                raise SuiteError(f"its task.json describes task {spec.id!r}; {MODULE_FIX}.")
            parsed = self.method.parse(task_id, spec, config, split_tensors(tensors)[0], self.hidden)
            check_window_pool(parsed.head, self.suite.long_inputs)
        except (ScoreplexError, KeyError, TypeError, ValueError) as exc:
            raise task_module_error(task_id, exc) from exc
        return ResidentModule(
            task_id,
            spec,
            dict(config),
            parsed.head,
            parsed.lora,
            parsed.scaling,
            parsed.rank,
            parsed.nbytes,
            0.0,
            "",
            task_vec=parsed.task_vec,
        )

    # -- changing the suite while serving ----------------------------------------------------------------------------
    def add(
        self,
        spec: TaskSpec,
        tensors: dict[str, torch.Tensor],
        config: dict[str, Any],
        summary: dict[str, Any] | None = None,
        *,
        replace: bool = False,
        decoding: dict[str, Any] | None = None,
        lexical: dict[str, Any] | None = None,
    ) -> None:
        """Write a task module into the suite (atomically) and serve it from the next request.

        The module (and its ``decoding``, :class:`scoreplex.decoding.Decoding` as a dict) is checked before anything
        is written. An existing task is only overwritten with ``replace``.
        """
        if not self.method.capabilities.trains_per_task:
            raise ConfigError(
                f"tasks do not join a {self.method.name!r} suite as trained modules ({self.method.description})"
                + (
                    ": use `scoreplex adapt` (scoreplex.moe.adapt_to_task)."
                    if self.method.capabilities.adaptable
                    else "."
                )
            )
        with self.lock:
            if self.suite.has_task(spec.id) and not replace:
                raise ConfigError(f"task {spec.id!r} is already in the suite; pass replace=True to overwrite it.")
            module = self.parse(spec.id, spec, config, tensors)
            try:
                if decoding is not None:
                    Decoding.from_dict(decoding, spec)
                if lexical is not None:
                    LexicalStack.from_module(spec, split_tensors(tensors)[1], lexical)
            except ScoreplexError as exc:
                raise task_module_error(spec.id, exc) from exc
            if self.on_check is not None:
                self.on_check(module)  # fits the engine's encoder? checked before anything is written
            self.evict(spec.id)
            self.suite.add_task(spec, tensors, config, summary or {}, decoding=decoding, lexical=lexical)

    def replace(self, spec: TaskSpec, tensors: dict[str, torch.Tensor], config: dict[str, Any], summary=None) -> None:
        """Overwrite an existing task's module (UnknownTaskError if there is none)."""
        with self.lock:
            self._require(spec.id)
            self.add(spec, tensors, config, summary, replace=True)

    def import_task(self, source: Suite | str | os.PathLike[str], task_id: str, *, replace: bool = False) -> None:
        """Copy one task from another suite trained on the same backbone with the same method, pooling, max_length
        and long-input mode (a task reads its responses as it was trained to)."""
        src = source if isinstance(source, Suite) else Suite.open(source, verify=False)
        mine, theirs = self.suite.manifest, src.manifest
        keys = ("method", "pooling", "max_length")
        clash = {k: (theirs.get(k), mine.get(k)) for k in keys if theirs.get(k) != mine.get(k)}
        if src.long_inputs != self.suite.long_inputs:
            clash["long_inputs"] = (src.long_inputs.to_dict(), self.suite.long_inputs.to_dict())
        if theirs["backbone"]["sha256"] != mine["backbone"]["sha256"]:
            clash["backbone"] = (theirs["backbone"]["name"], mine["backbone"]["name"])
        if clash:
            raise SuiteError(
                f"task {task_id!r} of {src.root} cannot join the suite at {self.suite.root}: {clash} (theirs, ours) "
                "differ. Retrain the task with this suite's backbone, method, pooling, max_length and long-input mode."
            )
        info, tensors = src.load_module(task_id)
        tensors = {**tensors, **split_tensors(src.module_tensors(task_id, lexical=True))[1]}
        self.add(
            TaskSpec.from_dict(info["spec"]),
            tensors,
            info["config"],
            info.get("summary", {}),
            replace=replace,
            decoding=info.get("decoding"),
            lexical=info.get("lexical"),
        )

    def remove(self, task_id: str) -> None:
        """Remove a task from the suite (manifest first, then its folder) and from memory."""
        with self.lock:
            self._require(task_id)
            self.evict(task_id)
            self.suite.remove_task(task_id)

    def refresh(self) -> list[str]:
        """Re-read manifest.json (another process may have trained, replaced or removed tasks); modules whose files
        changed or vanished leave memory. Returns the task ids that were dropped from memory."""
        with self.lock:
            fresh = Suite.open(self.suite.root, verify=False).manifest
            dropped = []
            for task_id, module in list(self._cache.items()):
                entry = fresh["tasks"].get(task_id)
                if entry is None or entry["files"].get(MODULE_FILE) != module.sha256:
                    self.evict(task_id)
                    dropped.append(task_id)
            self.suite.manifest = fresh
            return dropped

    def stats(self) -> dict[str, Any]:
        """Cache counters, residency, and the cold-load times (ms) per task."""
        with self.lock:
            return {
                **self.counters,
                "resident": len(self._cache),
                "resident_bytes": self.resident_bytes,
                "max_tasks": self.max_tasks,
                "max_bytes": self.max_bytes,
                "load_ms": {t: [round(s * 1e3, 3) for s in v] for t, v in self.load_seconds.items()},
            }
