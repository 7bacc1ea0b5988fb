"""The inference engine: a stream of (task, response) pairs that mixes any tasks, scored in ONE backbone pass per batch.

Per call: tokenise every response once; cut length-aware batches (rows of similar length, so little padding) that
mix tasks freely; for each batch load and pin the tasks it needs (:class:`~scoreplex.engine.store.AdapterStore`),
give every row its task's adapter slot, run the shared encoder once with those slots set, pool, pass the pooled
features through the method's shared block if it has one (a MoE student's expert block, with each row's task
embedding), then apply each row's own head, rows grouped by task (heads of any size side by side). Every row's result
equals scoring that row alone with its task (tested against :class:`scoreplex.scorer.SuiteScorer`, the PEFT path).

:class:`Engine` composes an *encoder backend* with the store: :class:`~scoreplex.engine.encoders.TorchEncoder`
(PyTorch, per-row LoRA through :class:`~scoreplex.engine.multilora.MultiLoRA`) by default, or an ONNX Runtime graph
(:class:`~scoreplex.engine.onnx_runtime.OnnxEncoder`, fp32 or INT8). Both keep their adapters in one
:class:`~scoreplex.engine.slots.LoRASlotTable`. The engine serves every method whose tasks share one backbone pass
(``capabilities.shares_backbone_pass``: ``lora``, ``head``, ``moe``, ``cross-item``); it asks the method, never its
name. A method that reads each response with its task's text (``capabilities.pairs_text``: ``cross-item``, question
and response as a text pair) has the rows of a call encoded task by task (:meth:`Method.encode`) and then batched
together like any others.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from scoreplex.backbone import Backbone
from scoreplex.content import problem_rows
from scoreplex.encoding import (
    DEFAULT_MAX_TOKENS,
    Encoded,
    LengthCounts,
    collate,
    encode_texts,
    pool_windows,
    token_batches,
)
from scoreplex.errors import ConfigError, DataError, ScoreplexError, UnknownTaskError
from scoreplex.heads import probabilities
from scoreplex.methods.base import task_module_error
from scoreplex.predictions import Predictions, from_probabilities, group_by_task
from scoreplex.suite import Suite

from .encoders import EncoderBackend, TorchEncoder
from .multilora import DEFAULT_LORA_IMPL
from .store import AdapterStore, ResidentModule

ON_ERROR = ("raise", "row")


def check_batching(batch_size: int, max_tokens: int | None) -> None:
    """Validate an engine's batching options (rows per pass, padded tokens per pass)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}; give a row count >= 1, e.g. 32.")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ConfigError(f"max_tokens={max_tokens!r}; give a token count >= 1 (e.g. 1024) or None.")


class Engine:
    """Score mixed-task batches with one shared encoder pass, per-row LoRA adapters and per-task heads.

    Args:
        suite: a suite folder (or an open :class:`Suite`) whose method shares one backbone pass.
        backbone: a backbone name or folder, or a loaded :class:`~scoreplex.backbone.Backbone`; None takes the
            suite's (:func:`scoreplex.backbone.suite_backbone`). A loaded Backbone's encoder is copied when the
            method changes it (LoRA wrapping, a student's weights) and shared as is otherwise. Ignored with
            ``encoder``.
        encoder: an encoder backend (e.g. an ONNX Runtime graph); None builds the PyTorch one.
        max_tasks, max_bytes: the budget of task modules held in memory (LRU beyond it); None means no limit.
        batch_size: at most this many rows per encoder pass.
        max_tokens: at most this many padded tokens (rows x longest row) per encoder pass; the rows of a call are
            sorted by length and cut into such micro-batches (None: ``batch_size`` rows in length order).
        lora_impl: ``"gathered"`` or ``"grouped"`` (see :mod:`scoreplex.engine.multilora`), PyTorch backend only.

    Raises:
        ConfigError: the suite's method cannot share a backbone pass (e.g. full fine-tunes), or bad batching options.
        BackboneMismatchError: the backbone is not the one the suite was trained on.
    """

    def __init__(
        self,
        suite: Suite | str | os.PathLike[str],
        backbone: Backbone | str | os.PathLike[str] | None = None,
        *,
        encoder: EncoderBackend | None = None,
        max_tasks: int | None = None,
        max_bytes: int | None = None,
        batch_size: int = 32,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        lora_impl: str = DEFAULT_LORA_IMPL,
    ) -> None:
        check_batching(batch_size, max_tokens)
        self.suite = (
            suite if isinstance(suite, Suite) else Suite.open(suite, verify=False)
        )  # files verify on first read
        self.method = self.suite.method_object
        caps = self.method.capabilities
        if not caps.shares_backbone_pass:
            from scoreplex.methods import methods_with

            raise ConfigError(
                f"the suite at {self.suite.root} is a {self.method.name!r} suite ({self.method.description}): "
                "its tasks cannot share a backbone pass (one encoder per task). Score it with "
                "scoreplex.scorer.SuiteScorer (`scoreplex score` picks it), or train the tasks with a method of "
                f"{', '.join(methods_with('shares_backbone_pass'))}."
            )
        self.bb: Backbone | None = None
        self.moe = None
        """The block applied after pooling (a MoE student's expert block), or None."""
        if encoder is None:
            changes_encoder = caps.has_adapters or caps.suite_wide_shared
            bb = Backbone.for_suite(self.suite, backbone)
            if isinstance(backbone, Backbone) and changes_encoder:
                bb = bb.copy()
            self.bb = bb
            self.moe = self.method.install_shared(self.suite, bb.encoder, bb.hidden)
            encoder = TorchEncoder(
                bb.encoder, bb.tokenizer, self.suite.pooling, adapters=caps.has_adapters, impl=lora_impl
            )
        self.backend = encoder
        self.tokenizer = encoder.tokenizer
        self.device = encoder.device
        self.max_length = self.suite.max_length
        self.long_inputs = self.suite.long_inputs
        self.pooling = self.suite.pooling
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.length_counts = LengthCounts()
        """Responses encoded by this engine so far, and how many were longer than ``max_length`` (cut, or windowed
        in the suite's windows mode); ``scoreplex score`` reports it."""
        self.lock = threading.RLock()
        self.store = AdapterStore(
            self.suite,
            hidden=encoder.hidden,
            max_tasks=max_tasks,
            max_bytes=max_bytes,
            on_load=self._install,
            on_evict=self._uninstall,
            on_check=lambda module: encoder.fits(module.task_id, module.lora),
            lock=self.lock,
        )

    # -- the encoder backend ------------------------------------------------------------------------------------------
    @property
    def encoder(self):
        """The PyTorch encoder module (None for a backend without one, e.g. ONNX Runtime)."""
        return getattr(self.backend, "encoder", None)

    @property
    def lora(self):
        """The PyTorch backend's :class:`~scoreplex.engine.multilora.MultiLoRA` (None without adapters)."""
        return getattr(self.backend, "lora", None)

    @property
    def lora_impl(self) -> str | None:
        return self.backend.impl

    @lora_impl.setter
    def lora_impl(self, name: str) -> None:
        with self.lock:
            self.backend.impl = name

    def _install(self, module: ResidentModule) -> None:
        """Adapters into the backend's slot table (called by the store, under the lock)."""
        module.head.to(self.device)
        if module.lora:
            module.slot = self.backend.install(module.key, module.task_id, module.lora, module.scaling)

    def _uninstall(self, module: ResidentModule) -> None:
        self.backend.release(module.key)
        module.slot = -1

    def _pooled(
        self, ids: torch.Tensor, mask: torch.Tensor, row_modules: Sequence[Any], windows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ONE encoder pass for every row of a batch, each with its task's adapter slot; pooled features (B, H), or
        (B, 2H) in a suite whose windows are pooled ``mean+max``.

        With ``windows (W,)`` (windows mode), ``ids`` are the windows of the rows: each window runs with its row's
        slot, and the windows' pooled vectors are combined per row as the suite says
        (:func:`~scoreplex.encoding.pool_windows`; the backend, PyTorch or ONNX, sees windows)."""
        how = self.long_inputs.window_pool
        if windows is None:
            pooled = self.backend.pool(ids, mask, [m.slot for m in row_modules])  # (B, H)
            return pool_windows(pooled, None, len(row_modules), how)
        slots = [row_modules[o].slot for o in windows.tolist()]
        pooled = self.backend.pool(ids, mask, slots)  # (W, H)
        return pool_windows(pooled, windows.to(pooled.device), len(row_modules), how)  # (B, H) or (B, 2H)

    @property
    def task_ids(self) -> list[str]:
        return self.store.task_ids

    def preload(self, task_ids: Iterable[str]) -> None:
        """Load tasks ahead of their first request (within the budget, later ones evict earlier ones)."""
        for task_id in task_ids:
            self.store.get(task_id)

    # -- scoring -----------------------------------------------------------------------------------------------------
    def _run(self, pairs: Sequence[tuple[str, str]], on_error: str) -> list[tuple[ResidentModule, list] | Exception]:
        """Per row ``(module, [probabilities (K_d,) per dimension])``, or its task's error (``on_error='row'``)."""
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
        problems = problem_rows(texts)  # the one content rule (scoreplex.content)
        if problems and on_error == "raise":
            i, message, fix = problems[0]
            raise DataError(message, row=i, fix=fix)
        for i, message, fix in problems:
            out[i] = DataError(message, row=i, fix=fix)
        keep = [i for i in range(len(pairs)) if out[i] is None and task_ids[i] not in errors]
        if keep:  # rows of unknown tasks are never tokenised; they get their task's error below
            enc = self._encode([task_ids[i] for i in keep], [texts[i] for i in keep], errors, on_error)
            with self.lock:
                self.length_counts += enc.counts
            for idx in token_batches(enc.lengths, max_rows=self.batch_size, max_tokens=self.max_tokens):
                rows = [int(i) for i in idx if task_ids[keep[i]] not in errors]
                if rows:
                    self._score_batch(
                        enc, rows, [task_ids[i] for i in keep], keep, out, errors if on_error == "row" else None
                    )
        for i, task_id in enumerate(task_ids):
            if out[i] is None:
                out[i] = errors[task_id]
        return out

    def _encode(
        self, task_ids: list[str], texts: list[str], errors: dict[str, ScoreplexError], on_error: str
    ) -> Encoded:
        """Every row as its task's model reads it, in input order: the response alone (in the suite's long-input
        mode), or for a method that ``pairs_text`` each task's rows through :meth:`Method.encode` with its
        ``task.json`` (a task whose task.json fails raises, or with ``on_error="row"`` goes to ``errors``)."""
        if not self.method.capabilities.pairs_text:
            return encode_texts(self.tokenizer, texts, self.max_length, checked=True, long_inputs=self.long_inputs)
        parts: list[tuple[list[int], Encoded]] = []
        for task_id, index in group_by_task(task_ids).items():
            try:
                info = self.suite.task_info(task_id)
            except ScoreplexError as exc:
                if on_error == "raise":
                    raise task_module_error(task_id, exc) from exc
                errors[task_id] = task_module_error(task_id, exc)
                info = {}  # its rows are encoded alone and never scored
            sub = [texts[i] for i in index]
            enc = self.method.encode(self.tokenizer, sub, self.max_length, info, long_inputs=self.long_inputs)
            parts.append((index, enc))
        return joined(parts, len(texts))

    @torch.no_grad()
    def _score_batch(
        self, enc, rows: list[int], task_ids: list[str], positions: list[int], out: list, errors: dict | None
    ) -> None:
        """Score ``rows`` of ``enc`` (tasks ``task_ids``) into ``out`` at ``positions[row]``."""
        with self.lock, self.store.pinned([task_ids[i] for i in rows], errors) as modules:
            rows = [i for i in rows if task_ids[i] in modules]
            if not rows:
                return
            batch = collate(enc, rows)
            ids = batch["input_ids"].to(self.device)  # (B, T)
            mask = batch["attention_mask"].to(self.device)  # (B, T)
            row_tasks = [task_ids[i] for i in rows]
            n_tokens = batch.get("n_tokens")  # (B,) for heads with the length feature (None: not recorded)
            n_tokens = None if n_tokens is None else n_tokens.to(self.device)
            # (B, H), or (B, 2H) in a suite whose windows are pooled mean+max
            pooled = self._pooled(ids, mask, [modules[t] for t in row_tasks], batch.get("windows"))
            if self.moe is not None:  # each row through the MoE block with its own task's embedding
                vecs = torch.stack([modules[t].task_vec for t in row_tasks]).to(self.device)
                pooled, _ = self.moe(pooled, vecs)
            by_task: dict[str, list[int]] = {}
            for p, t in enumerate(row_tasks):
                by_task.setdefault(t, []).append(p)
            for t, batch_pos in by_task.items():
                module = modules[t]
                row_tokens = None if n_tokens is None else n_tokens[batch_pos]
                logits = module.head(pooled[batch_pos], row_tokens)  # (n_t, sum K_t)
                probs = [p.cpu().numpy() for p in probabilities(logits, module.spec.class_counts)]  # [(n_t, K_d)]
                for j, p in enumerate(batch_pos):
                    out[positions[rows[p]]] = (module, [pd[j] for pd in probs])

    def score(self, pairs: Sequence[tuple[str, str]], *, on_error: str = "raise") -> list[dict[str, Any]]:
        """Score ``(task id, response)`` pairs that mix any tasks; one dict per pair, in input order.

        Each dict: ``task``; ``labels`` {dimension: predicted score in the dimension's scale, the class itself
        without one}; ``probs`` {dimension: class probabilities, in scale order};
        ``confidence`` (the routing confidence, :attr:`scoreplex.predictions.Predictions.confidence`); ``route``
        (``auto`` or ``human``). Labels, probabilities and route follow the task module's decoding
        (:mod:`scoreplex.decoding`: temperature, ordinal cut points, routing threshold). An unknown task raises
        UnknownTaskError and a missing or corrupt module SuiteError naming the task; with ``on_error="row"`` those
        rows get ``{"task", "error"}`` instead and the other rows are scored.
        """
        items = self._run(pairs, on_error)
        out: list[dict[str, Any]] = [
            {"task": str(task_id), "error": str(item)} if isinstance(item, Exception) else {}
            for (task_id, _), item in zip(pairs, items, strict=True)
        ]
        scored = [i for i, item in enumerate(items) if not isinstance(item, Exception)]
        texts = [pairs[i][1] for i in range(len(pairs))]
        for positions in group_by_task([pairs[i][0] for i in scored]).values():
            positions = [scored[j] for j in positions]
            pred = _decoded(items, positions, texts, [""] * len(positions))
            names = pred.spec.dimension_names
            for j, i in enumerate(positions):
                out[i] = {
                    "task": pred.spec.id,
                    "labels": pred.values(j),
                    "probs": {n: pred.probs[d][j].tolist() for d, n in enumerate(names)},
                    "confidence": float(pred.confidence[j]),
                    "route": pred.routes[j],
                }
        return out

    def predict(self, task_id: str, texts: Sequence[str], ids: Sequence[str] | None = None) -> Predictions:
        """Score responses of one task into :class:`~scoreplex.predictions.Predictions` (SuiteScorer's interface)."""
        if not texts:
            spec = self.suite.spec(task_id)
            return from_probabilities(spec, [], [np.zeros((0, k)) for k in spec.class_counts])
        ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
        return self.predict_mixed([task_id] * len(texts), texts, ids)[0][1]

    def predict_mixed(
        self, task_ids: Sequence[str], texts: Sequence[str], ids: Sequence[str]
    ) -> list[tuple[list[int], Predictions]]:
        """Rows of mixed tasks in one pass per batch; per task, its input positions and :class:`Predictions` (see
        :class:`~scoreplex.predictions.MixedScorer`). An unknown or broken task raises, naming it."""
        items = self._run(list(zip(task_ids, texts, strict=True)), "raise")
        return [
            (positions, _decoded(items, positions, texts, [ids[i] for i in positions]))
            for positions in group_by_task(task_ids).values()
        ]


def joined(parts: Sequence[tuple[Sequence[int], Encoded]], n: int) -> Encoded:
    """One :class:`~scoreplex.encoding.Encoded` of ``n`` rows from parts that each encode the rows at their
    positions (every position in exactly one part): token ids in position order, cut and window counts summed,
    ``n_tokens`` kept when every part records it. The parts come from one suite, so they share a long-input mode."""
    ids: list[list[int] | None] = [None] * n
    n_tokens = np.zeros(n, dtype=np.int64)
    with_tokens = True
    for index, enc in parts:
        for j, i in enumerate(index):
            ids[i] = enc.input_ids[j]
        if enc.n_tokens is None:
            with_tokens = False
        else:
            n_tokens[np.asarray(index)] = enc.n_tokens
    windows = {enc.window for _, enc in parts}
    if len(windows) > 1 or any(row is None for row in ids):
        raise ValueError(f"parts cover {sum(r is not None for r in ids)} of {n} rows in windows {windows}")
    return Encoded(
        ids,
        None,
        parts[0][1].pad_id,
        truncated=sum(enc.truncated for _, enc in parts),
        window=windows.pop(),
        windowed=sum(enc.windowed for _, enc in parts),
        n_tokens=n_tokens if with_tokens else None,
    )


def _decoded(items: list, positions: list[int], texts: Sequence[str], ids: Sequence[str]) -> Predictions:
    """The :class:`Predictions` of rows ``positions`` of one task from :meth:`Engine._run`'s per-row probabilities:
    its stacked lexical model applied to the group at once, then its decoding."""
    module = items[positions[0]][0]
    probs = [np.stack([items[i][1][d] for i in positions]) for d in range(len(module.spec.class_counts))]
    if module.lexical is not None:
        probs = module.lexical.apply(probs, [texts[i] for i in positions])
    return from_probabilities(module.spec, ids, probs, module.decoding)
