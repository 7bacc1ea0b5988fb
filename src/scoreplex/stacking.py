"""Lexical evidence stacked onto the neural head, per task, kept only where validation says it helps.

A task module may carry a :class:`~scoreplex.lexical.LexicalModel` (word + character n-gram TF-IDF with a logistic
regression; tensors named ``lexical.*`` in its ``module.safetensors``, vocabulary and settings under ``lexical`` in
its ``task.json``) and a weight ``w``. Every scorer then combines, per rubric dimension, the neural head's
probabilities ``p`` with the lexical model's ``q`` as ``softmax(log p + w log q)`` before decoding
(:mod:`scoreplex.decoding`), in the same pass over the batch. ``w`` is chosen on the validation split with
:func:`scoreplex.lexical.stack_weight` (cross-fitted keep/drop rule); a task whose ``w`` is 0 stores nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scoreplex.errors import ScoreplexError, SuiteError
from scoreplex.lexical import TENSOR_PREFIX, LexicalConfig, LexicalModel, combine_log_probs, stack_weight
from scoreplex.tasks import TaskSpec

_FLOOR = 1e-12
MIN_ROWS = 20
"""Fewest training and validation responses a task needs before a lexical model is fitted and judged for it."""


@dataclass
class LexicalStack:
    """A task's lexical model and its stacking weight ``w > 0``."""

    model: LexicalModel
    weight: float

    def apply(self, probs: Sequence[np.ndarray], texts: Sequence[str]) -> list[np.ndarray]:
        """Stacked probabilities ``[(N, K_d)]`` from the neural ones ``[(N, K_d)]`` of ``texts`` (``N``)."""
        if len(texts) == 0:
            return list(probs)
        neural = [np.log(np.clip(np.asarray(p, dtype=np.float64), _FLOOR, 1.0)) for p in probs]
        return [np.exp(lp) for lp in combine_log_probs(neural, self.model.log_probs(list(texts)), self.weight)]

    def record(self) -> tuple[dict, dict[str, Any]]:
        """``(tensors, task.json record)`` to store it in a task module."""
        tensors, config = self.model.to_tensors()
        return tensors, {"weight": self.weight, "config": config}

    @classmethod
    def from_module(cls, spec: TaskSpec, tensors: Mapping, record: Any) -> LexicalStack | None:
        """Parse a task module's ``lexical`` record (untrusted) and its ``lexical.*`` tensors; None without one."""
        if record is None:
            return None
        if not isinstance(record, Mapping) or not isinstance(record.get("config"), Mapping):
            raise SuiteError(f"task {spec.id!r}: its task.json 'lexical' record is not an object with a 'config'.")
        w = record.get("weight")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 100:
            raise SuiteError(f"task {spec.id!r}: its lexical weight {w!r} is not a number in (0, 100].")
        model = LexicalModel.from_tensors(tensors, record["config"], spec=spec)
        return cls(model, float(w))


def split_tensors(tensors: Mapping) -> tuple[dict, dict]:
    """``(neural tensors, lexical tensors)`` of a task module (the lexical ones are named ``lexical.*``)."""
    neural = {k: v for k, v in tensors.items() if not k.startswith(TENSOR_PREFIX)}
    lexical = {k: v for k, v in tensors.items() if k.startswith(TENSOR_PREFIX)}
    return neural, lexical


def fit_stack(
    spec: TaskSpec,
    train_texts: Sequence[str],
    train_labels: np.ndarray,
    val_texts: Sequence[str],
    val_labels: np.ndarray,
    val_probs: Sequence[np.ndarray],
    config: LexicalConfig | None = None,
) -> tuple[LexicalStack | None, dict[str, Any]]:
    """Fit a task's lexical model on its training responses and choose its weight on validation.

    ``val_probs`` are the neural head's probabilities ``[(N_val, K_d)]`` of ``val_texts``. Returns the stack (None
    when :func:`scoreplex.lexical.stack_weight` drops it) and the report of the choice (JSON-ready). A task with
    fewer than :data:`MIN_ROWS` training or validation responses, or whose texts give the lexical model nothing to
    fit (e.g. no word occurs twice), is skipped: the report says why."""
    skipped = {"kept": False, "weight": 0.0, "neural_qwk": None, "lexical_qwk": None}
    if len(train_texts) < MIN_ROWS or len(val_texts) < MIN_ROWS:
        return None, {**skipped, "skipped": f"fewer than {MIN_ROWS} training or validation responses"}
    try:
        model = LexicalModel.fit(spec, list(train_texts), train_labels, config)
    except ScoreplexError as exc:
        return None, {**skipped, "skipped": f"the lexical model could not be fitted: {exc}"}
    neural = [np.log(np.clip(np.asarray(p, dtype=np.float64), _FLOOR, 1.0)) for p in val_probs]
    weight, report = stack_weight(neural, model.log_probs(list(val_texts)), val_labels, spec)
    summary = {k: report.get(k) for k in ("neural_qwk", "lexical_qwk", "best_weight", "oof_stacked_qwk", "kept")}
    summary["weight"] = weight
    return (LexicalStack(model, weight) if weight > 0 else None), summary
