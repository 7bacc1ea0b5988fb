"""The inference engine: a stream of (task, response) pairs that mixes any tasks, scored in ONE backbone pass per batch.

Per call: tokenise every response once; cut length-aware batches (rows of similar length, so little padding) that
mix tasks freely; for each batch load and pin the tasks it needs (:class:`~scoreplex.engine.store.AdapterStore`),
give every row its task's adapter slot, run the shared encoder once with those slots set
(:class:`~scoreplex.engine.multilora.MultiLoRA`), pool, then apply each row's own head, rows grouped by task (heads of
any size side by side). Every row's result equals scoring that row alone with its task (tested against
:class:`scoreplex.pipeline.SuiteScorer`, the PEFT path).

Serves suites of method ``lora`` (per-task adapters + heads), ``head`` (heads on the frozen encoder) and ``moe`` (a
UniMoE student: its fine-tuned encoder once, then the MoE block with each row's task embedding). Suites of
per-task full fine-tunes have one encoder per task, so their rows cannot share a pass: use SuiteScorer for them.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scoreplex.backbone import pool
from scoreplex.encoding import DEFAULT_MAX_TOKENS, collate, encode_texts, token_batches
from scoreplex.errors import ConfigError, DataError, ScoreplexError, UnknownTaskError
from scoreplex.heads import probabilities
from scoreplex.pipeline import Backbone
from scoreplex.scoring import Predictions
from scoreplex.suite import Suite
from scoreplex.tasks import TaskSpec

from .multilora import DEFAULT_LORA_IMPL, MultiLoRA
from .store import AdapterStore, TaskModule

SHARED_METHODS = ("lora", "head", "moe")
"""Suite methods whose tasks share one encoder pass."""
ON_ERROR = ("raise", "row")


def check_batching(batch_size: int, max_tokens: int | None) -> None:
    """Validate an engine's batching options (rows per pass, padded tokens per pass)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}; give a row count >= 1, e.g. 32.")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ConfigError(f"max_tokens={max_tokens!r}; give a token count >= 1 (e.g. 1024) or None.")


class Engine:
    """Score mixed-task batches with one shared encoder, per-row LoRA adapters and per-task heads.

    Args:
        suite: a suite folder (or an open :class:`Suite`) of method ``lora`` or ``head``.
        backbone: a backbone name or folder, or a loaded :class:`~scoreplex.pipeline.Backbone`; None takes the one
            recorded in the suite's manifest. A loaded Backbone's encoder is copied for a LoRA suite (the engine
            wraps its linear layers), and shared as is for a head suite.
        max_tasks, max_bytes: the budget of task modules held in memory (LRU beyond it); None means no limit.
        batch_size: at most this many rows per encoder pass.
        max_tokens: at most this many padded tokens (rows x longest row) per encoder pass; the rows of a call are
            sorted by length and cut into such micro-batches (None: ``batch_size`` rows in length order).
        lora_impl: ``"gathered"`` or ``"grouped"`` (see :mod:`scoreplex.engine.multilora`).
    """

    moe = None
    """A MoE student's block (set for ``moe`` suites only)."""

    def __init__(
        self,
        suite: Suite | str | os.PathLike[str],
        backbone: Backbone | str | os.PathLike[str] | None = None,
        *,
        max_tasks: int | None = None,
        max_bytes: int | None = None,
        batch_size: int = 32,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        lora_impl: str = DEFAULT_LORA_IMPL,
    ) -> None:
        check_batching(batch_size, max_tokens)
        self.suite = suite if isinstance(suite, Suite) else Suite.open(suite, verify=False)  # tasks verify on load
        method = self.suite.method
        if method == "full":
            raise ConfigError(
                f"the suite at {self.suite.root} holds full fine-tunes (one encoder per task): full-fine-tune suites "
                "cannot share a backbone pass. Score them with scoreplex.pipeline.SuiteScorer, or train the tasks "
                "with method 'lora' or 'head'."
            )
        if method not in SHARED_METHODS:
            raise ConfigError(
                f"the engine serves suites of method {' or '.join(SHARED_METHODS)}; this one is {method!r}."
            )
        self.bb = self._backbone(backbone, copy_encoder=method in ("lora", "moe"))
        self.suite.check_backbone(self.bb.info.sha256, self.bb.info.name)
        self.encoder = self.bb.encoder.eval()
        self.device = next(self.encoder.parameters()).device
        self.moe = self._load_student() if method == "moe" else None
        self.tokenizer = self.bb.tokenizer
        self.max_length = int(self.suite.manifest["max_length"])
        self.pooling = str(self.suite.manifest["pooling"])
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.lock = threading.RLock()
        self.lora = MultiLoRA(self.encoder, lora_impl) if method == "lora" else None
        self.store = AdapterStore(
            self.suite,
            hidden=self.bb.hidden,
            max_tasks=max_tasks,
            max_bytes=max_bytes,
            on_load=self._install,
            on_evict=self._uninstall,
            lock=self.lock,
        )

    def _backbone(self, backbone, *, copy_encoder: bool) -> Backbone:
        if isinstance(backbone, Backbone):
            if not copy_encoder:
                return backbone
            return Backbone(copy.deepcopy(backbone.encoder), backbone.tokenizer, backbone.info)
        name = backbone
        if name is None:
            stored = self.suite.manifest["backbone"]
            name = stored["path"] if Path(stored["path"]).is_dir() else stored["name"]
        return Backbone.load(name)

    def _load_student(self):
        """A MoE student's shared part: its fine-tuned encoder (loaded into ours) and its MoE block."""
        from scoreplex.methods import Method
        from scoreplex.moe.model import MoEBlock, MoEConfig
        from scoreplex.moe.train import SHARED_NAME

        shared = self.suite.load_shared(SHARED_NAME)
        Method._load_strict(
            self.encoder, {k[8:]: v for k, v in shared.items() if k.startswith("encoder.")}, "student encoder weights"
        )
        moe = MoEBlock(self.bb.hidden, MoEConfig(**self.suite.manifest["moe"]))
        Method._load_strict(moe, {k[4:]: v for k, v in shared.items() if k.startswith("moe.")}, "MoE block weights")
        return moe.to(self.device).eval()

    # -- adapters in and out of the slot tables (called by the store, under the lock) --------------------------------
    def _install(self, module: TaskModule) -> None:
        module.head.to(self.device)
        if self.lora is not None and module.lora:
            module.slot = self.lora.install(module.key, module.lora, module.scaling)

    def _uninstall(self, module: TaskModule) -> None:
        if self.lora is not None:
            self.lora.release(module.key)
        module.slot = -1

    @property
    def lora_impl(self) -> str | None:
        return None if self.lora is None else self.lora.impl

    @lora_impl.setter
    def lora_impl(self, name: str) -> None:
        if self.lora is None:
            raise ConfigError("this is a head-only suite: it has no LoRA adapters to compute.")
        with self.lock:
            self.lora.impl = name

    @property
    def task_ids(self) -> list[str]:
        return self.store.task_ids

    def preload(self, task_ids: Iterable[str]) -> None:
        """Load tasks ahead of their first request (within the budget, later ones evict earlier ones)."""
        for task_id in task_ids:
            self.store.get(task_id)

    # -- scoring -----------------------------------------------------------------------------------------------------
    def _run(self, pairs: Sequence[tuple[str, str]], on_error: str) -> list[tuple[TaskSpec, list] | Exception]:
        """Per row ``(spec, [probabilities (K_d,) per dimension])``, or its task's error (``on_error='row'``)."""
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error={on_error!r}; choose one of: {', '.join(ON_ERROR)}.")
        task_ids, texts = [], []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, tuple | list) and len(pair) == 2 and isinstance(pair[1], str)):
                raise DataError(f"expected a (task id, response text) pair, got {pair!r}.", row=i)
            task_ids.append(str(pair[0]))
            texts.append(pair[1])
        errors: dict[str, ScoreplexError] = {}
        for task_id in dict.fromkeys(task_ids):
            if task_id not in self.store:
                exc = UnknownTaskError(
                    f"task {task_id!r} is not in the suite at {self.suite.root}; it holds: "
                    f"{', '.join(self.store.task_ids) or 'none'}."
                )
                if on_error == "raise":
                    raise exc
                errors[task_id] = exc
        out: list[Any] = [None] * len(pairs)
        if not pairs:
            return out
        enc = encode_texts(self.tokenizer, texts, self.max_length)
        for idx in token_batches(enc.lengths, max_rows=self.batch_size, max_tokens=self.max_tokens):
            rows = [int(i) for i in idx if task_ids[i] not in errors]
            if rows:
                self._score_batch(enc, rows, task_ids, out, errors if on_error == "row" else None)
        for i, task_id in enumerate(task_ids):
            if out[i] is None:
                out[i] = errors[task_id]
        return out

    def _pooled(self, ids: torch.Tensor, mask: torch.Tensor, row_modules: list[TaskModule]) -> torch.Tensor:
        """ONE encoder pass for every row of a batch, each with its task's adapter slot; pooled features (B, H).

        The one step a backend replaces (see :class:`scoreplex.engine.onnx_backend.OnnxEngine`).
        """
        slots = None
        if self.lora is not None:
            slots = torch.tensor([m.slot for m in row_modules], dtype=torch.long, device=self.device)
            if bool((slots < 0).all()):
                slots = None  # no row has an adapter: a plain forward
        with self.lora.use(slots) if self.lora is not None else contextlib.nullcontext():
            enc_out = self.encoder(input_ids=ids, attention_mask=mask)  # ONE pass for every task in the batch
        pooler_out = getattr(enc_out, "pooler_output", None)
        return pool(enc_out.last_hidden_state, mask, self.pooling, pooler_out)  # (B, H)

    @torch.no_grad()
    def _score_batch(self, enc, rows: list[int], task_ids: list[str], out: list, errors: dict | None) -> None:
        with self.lock, self.store.pinned([task_ids[i] for i in rows], errors) as modules:
            rows = [i for i in rows if task_ids[i] in modules]
            if not rows:
                return
            batch = collate(enc, rows)
            ids = batch["input_ids"].to(self.device)  # (B, T)
            mask = batch["attention_mask"].to(self.device)  # (B, T)
            row_tasks = [task_ids[i] for i in rows]
            pooled = self._pooled(ids, mask, [modules[t] for t in row_tasks])  # (B, H)
            if self.moe is not None:  # each row through the MoE block with its own task's embedding
                vecs = torch.stack([modules[t].task_vec for t in row_tasks]).to(self.device)
                pooled, _ = self.moe(pooled, vecs)
            by_task: dict[str, list[int]] = {}
            for p, t in enumerate(row_tasks):
                by_task.setdefault(t, []).append(p)
            for t, positions in by_task.items():
                module = modules[t]
                logits = module.head(pooled[positions])  # (n_t, sum K_t)
                probs = [p.cpu().numpy() for p in probabilities(logits, module.spec.class_counts)]  # [(n_t, K_d)]
                for j, p in enumerate(positions):
                    out[rows[p]] = (module.spec, [pd[j] for pd in probs])

    def score(self, pairs: Sequence[tuple[str, str]], *, on_error: str = "raise") -> list[dict[str, Any]]:
        """Score ``(task id, response)`` pairs that mix any tasks; one dict per pair, in input order.

        Each dict: ``task``; ``labels`` {dimension: predicted class}; ``probs`` {dimension: class probabilities};
        ``confidence`` (the smallest top-class probability over the dimensions). An unknown task raises
        UnknownTaskError and a missing or corrupt module SuiteError naming the task; with ``on_error="row"`` those
        rows get ``{"task", "error"}`` instead and the other rows are scored.
        """
        out = []
        for (task_id, _), item in zip(pairs, self._run(pairs, on_error), strict=True):
            if isinstance(item, Exception):
                out.append({"task": str(task_id), "error": str(item)})
                continue
            spec, probs = item
            names = spec.dimension_names
            out.append(
                {
                    "task": spec.id,
                    "labels": {n: int(p.argmax()) for n, p in zip(names, probs, strict=True)},
                    "probs": {n: p.tolist() for n, p in zip(names, probs, strict=True)},
                    "confidence": float(min(p.max() for p in probs)),
                }
            )
        return out

    def predict(self, task_id: str, texts: Sequence[str], ids: Sequence[str] | None = None) -> Predictions:
        """Score responses of one task into :class:`~scoreplex.scoring.Predictions` (SuiteScorer's interface)."""
        items = self._run([(task_id, t) for t in texts], "raise")
        spec = items[0][0] if items else self.suite.spec(task_id)
        probs = [
            np.stack([item[1][d] for item in items]) if items else np.zeros((0, k))
            for d, k in enumerate(spec.class_counts)
        ]
        labels = np.stack([p.argmax(axis=1) for p in probs], axis=1).astype(np.int64)
        ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
        return Predictions(spec=spec, ids=ids, labels=labels, probs=probs)
