"""What one running service holds: the engine (loaded in the app's lifespan), its worker thread, the batcher, the
keys, the metrics and the served suite's identity; and the engine work done on the worker thread (a batch, an admin
change of the suite).

Everything that touches the engine runs on ONE worker thread, in order: scoring batches and admin changes never
overlap, so the suite identity a batch reports is the one that scored it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from scoreplex.content import EMPTY_TEXT, has_content
from scoreplex.errors import ConfigError, SuiteError
from scoreplex.suite import MANIFEST_FILE, Suite

from .batching import Batcher
from .keys import ApiKeys
from .metrics import ServiceMetrics
from .settings import ServiceSettings

log = logging.getLogger("scoreplex.service")
T = TypeVar("T")

INVALID_TEXT = "the response text is not valid Unicode (it holds a lone surrogate, e.g. from a '\\ud800' escape)."


def open_suite(settings: ServiceSettings) -> Suite:
    """The suite to serve, checked before anything heavy loads: a suite folder whose method shares one backbone
    pass, and a backbone that resolves to the one it was trained on. Raises ScoreplexError naming the problem."""
    from scoreplex.backbone import backbone_fingerprint, resolve_backbone, suite_backbone
    from scoreplex.methods import methods_with

    suite = Suite.open(settings.suite, verify=False)
    method = suite.method_object
    if not method.capabilities.shares_backbone_pass:
        raise ConfigError(
            f"the suite at {suite.root} is a {method.name!r} suite ({method.description}): the service scores suites "
            f"whose tasks share one backbone pass ({', '.join(methods_with('shares_backbone_pass'))})."
        )
    name = suite_backbone(suite.manifest["backbone"], settings.backbone, suite_root=suite.root)
    suite.check_backbone(backbone_fingerprint(resolve_backbone(name)), name)
    return suite


def suite_identity(suite: Suite) -> dict[str, Any]:
    """What a client needs to tell which suite scored it: the SHA-256 of manifest.json (it changes with every task
    added, replaced or removed), the method and the backbone."""
    data = (Path(suite.root) / MANIFEST_FILE).read_bytes()
    backbone = suite.manifest["backbone"]
    return {
        "manifest_sha256": hashlib.sha256(data).hexdigest(),
        "method": suite.method,
        "backbone": str(backbone.get("name", "")),
        "backbone_sha256": str(backbone["sha256"]),
        "tasks": len(suite.task_ids),
    }


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ServiceState:
    """The running service. Built by the app factory; :meth:`load` and :meth:`start` run in the lifespan."""

    def __init__(self, settings: ServiceSettings, keys: ApiKeys) -> None:
        self.settings = settings
        self.keys = keys
        self.metrics = ServiceMetrics()
        self.engine = None
        self.batcher: Batcher | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.identity: dict[str, Any] = {}
        self.broken: dict[str, str] = {}
        """Tasks whose files failed verification at start-up (they answer per-row errors)."""
        self.loaded = False
        self._manifest_stamp: tuple[int, int, int] | None = None

    # -- life cycle (the lifespan) -------------------------------------------------------------------------------------
    def load(self) -> None:
        """Open and verify the suite (every file's hash; a broken task is recorded, not fatal), load the backbone
        and build the engine."""
        from scoreplex.engine import Engine

        suite = open_suite(self.settings)
        for task_id in suite.task_ids:
            try:
                suite.verify_task(task_id)
            except SuiteError as exc:
                self.broken[task_id] = str(exc)
                log.warning("task %s will not score: %s", task_id, exc)
        self.engine = Engine(suite, self.settings.backbone, max_tasks=self.settings.max_tasks)
        self.identity = suite_identity(suite)
        self._manifest_stamp = self._stamp()
        self.loaded = True

    def start(self) -> None:
        s = self.settings
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoreplex-engine")
        self.batcher = Batcher(
            self.score_batch,
            self.executor,
            max_batch_rows=s.max_batch_rows,
            max_wait_s=s.max_wait_ms / 1e3,
            queue_size=s.queue_size,
            on_batch=self.metrics.observe_batch,
        )
        self.batcher.start()
        self.metrics.watch(lambda: self.batcher.depth, lambda: self.batcher.rows_in_flight, self.engine_stats)

    async def stop(self) -> None:
        if self.batcher is not None:
            cut = await self.batcher.close(self.settings.shutdown_timeout_s)
            if cut:
                log.warning("shutdown deadline passed: %d queued requests were answered 503", cut)
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=False)

    @property
    def ready(self) -> bool:
        return self.loaded and self.batcher is not None and self.batcher.running and not self.batcher.closing

    def engine_stats(self) -> dict[str, Any] | None:
        if self.engine is None:
            return None
        return {"cache": self.engine.store.stats(), "tasks": len(self.engine.task_ids)}

    # -- engine work, on the worker thread -----------------------------------------------------------------------------
    def score_batch(self, pairs: list[tuple[str, str]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Score a batch of (task, text) rows that mixes any tasks; each failed row carries ``reason``:
        ``unknown_task``, ``empty_text``, ``invalid_text`` or ``task_unavailable`` (a missing or corrupt module)."""
        self.sync_with_disk()
        engine = self.engine
        out: list[dict[str, Any] | None] = [None] * len(pairs)
        keep = []
        for i, (task, text) in enumerate(pairs):  # refused here, each failing its own row only
            if not _valid_unicode(text):  # the tokenizer raises on it
                out[i] = {"task": task, "error": INVALID_TEXT, "reason": "invalid_text"}
            elif not has_content(text):  # the engine's rule (scoreplex.content), applied before it: a batch of
                out[i] = {"task": task, "error": EMPTY_TEXT, "reason": "empty_text"}  # only empty rows breaks it
            else:
                keep.append(i)
        rows = engine.score([pairs[i] for i in keep], on_error="row") if keep else []
        for i, row in zip(keep, rows, strict=True):
            if "error" in row:
                task = pairs[i][0]
                row["reason"] = "unknown_task" if task not in engine.store else "task_unavailable"
            out[i] = row
        return self.identity, out

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = (self.engine.suite.root / MANIFEST_FILE).stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def sync_with_disk(self) -> bool:
        """Pick up a change another process made to the served suite folder (on the worker thread).

        Several servers can serve one suite folder: the replicas of a Ray Serve deployment, or uvicorn processes
        behind one balancer. An admin request reaches one of them, which rewrites ``manifest.json`` (atomically: a
        new inode). Each server compares the manifest's (inode, mtime, size) before every batch and task request
        (one ``stat``); when it changed, :meth:`~scoreplex.engine.store.AdapterStore.refresh` re-reads it, so added
        tasks score, removed ones answer ``unknown_task`` and replaced modules leave memory. Returns True if the
        suite changed.
        """
        stamp = self._stamp()
        if stamp is None or stamp == self._manifest_stamp:
            return False
        self._manifest_stamp = stamp
        dropped = self.engine.store.refresh()
        self.refresh_identity()
        log.info("suite changed on disk: %d tasks now, %d modules reloaded", len(self.engine.task_ids), len(dropped))
        return True

    def refresh_identity(self) -> None:
        """After a change of the suite (on the worker thread)."""
        self.identity = suite_identity(self.engine.suite)
        for task_id in list(self.broken):
            if task_id not in self.engine.store:
                del self.broken[task_id]

    async def on_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the engine's worker thread, between batches, after :meth:`sync_with_disk`."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._synced, fn, args)

    def _synced(self, fn: Callable[..., T], args: tuple) -> T:
        self.sync_with_disk()
        return fn(*args)
