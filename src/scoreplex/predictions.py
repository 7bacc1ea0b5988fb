"""The one output type of every scorer, and the one formatter of its rows.

:class:`Predictions` is what :class:`scoreplex.scorer.SuiteScorer`, :class:`scoreplex.engine.Engine` and the ONNX
engine return for the responses of one task; a stream of mixed tasks comes back as ``(input positions, Predictions)``
per task (:class:`MixedScorer`), and :func:`ordered_rows` turns that into output rows in input order, the rows
``scoreplex score`` writes. Also here: running a TaskModel over encoded texts (:func:`predict_logits`,
:func:`embed_all`) and decoding logits (:func:`decode`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from scoreplex.encoding import DEFAULT_MAX_TOKENS, Encoded, collate, token_batches
from scoreplex.heads import probabilities
from scoreplex.tasks import TaskSpec

if TYPE_CHECKING:
    from scoreplex.decoding import Decoding


@dataclass
class Predictions:
    """Per response: predicted class per dimension ``labels (N, D)``, class probabilities per dimension
    ``probs [(N, K_d)]`` (calibrated when the task module holds a temperature), and ``automated (N,)``: True where the
    engine's score may stand alone (route ``auto``), False where the response goes to a human rater (route
    ``human``; see :mod:`scoreplex.decoding`). ``confidence (N,)`` in ``[0, 1]`` is, over the dimensions, the smallest
    of the per-dimension confidences of kind ``confidence_kind`` (:func:`scoreplex.decoding.dimension_confidence`):
    ``top``, the probability of the predicted class; ``quadratic``, one minus the expected quadratic disagreement
    between the predicted class and the class distribution (QWK's weights)."""

    spec: TaskSpec
    ids: list[str]
    labels: np.ndarray
    probs: list[np.ndarray]
    automated: np.ndarray | None = None
    """``(N,)`` bool; None means every response is automated (no routing threshold)."""
    confidence_kind: str = "top"
    """What :attr:`confidence` measures: ``top`` or ``quadratic`` (the task's routing confidence)."""
    given_confidence: np.ndarray | None = None
    """``(N,)`` confidences computed elsewhere (a server's answer); :attr:`confidence` returns them as they are."""

    def __post_init__(self) -> None:
        if self.automated is None:
            self.automated = np.ones(len(self.ids), dtype=bool)

    @property
    def confidence(self) -> np.ndarray:
        if self.given_confidence is not None:
            return np.asarray(self.given_confidence, dtype=np.float64)
        if not self.probs or len(self.ids) == 0:
            return np.zeros(len(self.ids))
        from scoreplex.decoding import dimension_confidence

        per_dim = [dimension_confidence(p, self.labels[:, d], self.confidence_kind) for d, p in enumerate(self.probs)]
        return np.min(np.stack(per_dim, axis=1), axis=1)

    @property
    def routes(self) -> list[str]:
        """``auto`` or ``human`` per response."""
        return ["auto" if a else "human" for a in self.automated]

    def values(self, i: int) -> dict[str, int | float | str]:
        """Response ``i``'s predicted score per dimension in the scale's own values (``2.5``, ``"B"``; the class
        itself for a dimension without a scale, see :meth:`scoreplex.tasks.Dimension.value`)."""
        return {dim.name: dim.value(int(self.labels[i, d])) for d, dim in enumerate(self.spec.dimensions)}

    def rows(self) -> list[dict]:
        """One JSON-ready dict per response (for writing score files): ``pred_<dim>`` in the scale's own values
        (:meth:`values`), ``prob_<dim>_<k>`` per class ``k`` in scale order (class 0 is the lowest scale point)."""
        conf = self.confidence
        out = []
        for i, rid in enumerate(self.ids):
            row: dict = {"id": rid, "task": self.spec.id}
            values = self.values(i)
            for d, dim in enumerate(self.spec.dimensions):
                row[f"pred_{dim.name}"] = values[dim.name]
                for k in range(dim.num_classes):
                    row[f"prob_{dim.name}_{k}"] = round(float(self.probs[d][i, k]), 6)
            row["confidence"] = round(float(conf[i]), 6)
            row["route"] = "auto" if self.automated[i] else "human"
            out.append(row)
        return out


Row = dict[str, Any]
"""One output row: ``id``, ``task``, ``pred_<dim>`` (a score in the dimension's scale), ``prob_<dim>_<k>`` (class
``k``, in scale order), ``confidence``, ``route``."""


class MixedScorer(Protocol):
    """What the file streamer (and the service) is handed: anything that scores rows of mixed tasks."""

    def predict_mixed(
        self, task_ids: Sequence[str], texts: Sequence[str], ids: Sequence[str]
    ) -> list[tuple[list[int], Predictions]]:
        """Per task present: the input positions of its rows and their :class:`Predictions` (in that order)."""
        ...


def ordered_rows(n: int, parts: Iterable[tuple[Sequence[int], Predictions]]) -> list[Row]:
    """THE formatter: ``n`` output rows in input order from per-task :class:`Predictions` and their positions."""
    out: list[Row | None] = [None] * n
    for positions, pred in parts:
        for i, row in zip(positions, pred.rows(), strict=True):
            out[i] = row
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:
        raise RuntimeError(f"the scorer returned no prediction for rows {missing[:5]}")  # a scorer bug, not user input
    return out  # type: ignore[return-value]


def score_rows(scorer: MixedScorer, ids: Sequence[str], task_ids: Sequence[str], texts: Sequence[str]) -> list[Row]:
    """Score rows of mixed tasks with any :class:`MixedScorer` into output rows, in input order."""
    return ordered_rows(len(ids), scorer.predict_mixed(task_ids, texts, ids))


def group_by_task(task_ids: Sequence[str]) -> dict[str, list[int]]:
    """``{task id: input positions}`` in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, task_id in enumerate(task_ids):
        groups.setdefault(task_id, []).append(i)
    return groups


def from_probabilities(
    spec: TaskSpec, ids: Sequence[str], probs: list[np.ndarray], decoding: Decoding | None = None
) -> Predictions:
    """Predictions from the model's class probabilities ``[(N, K_d)]``: by the task module's ``decoding``
    (calibration, ordinal decoding rule, routing; :mod:`scoreplex.decoding`) when given, else argmax per dimension
    with every response automated."""
    if decoding is not None:
        return decoding.predictions(spec, ids, probs)
    labels = np.stack([p.argmax(axis=1) for p in probs], axis=1).astype(np.int64) if probs else np.zeros((0, 0))
    return Predictions(spec=spec, ids=list(ids), labels=labels, probs=probs)


@torch.no_grad()
def predict_logits(
    model, enc: Encoded, batch_size: int = 64, max_tokens: int | None = DEFAULT_MAX_TOKENS
) -> torch.Tensor:
    """Logits ``(N, sum K)`` in the original row order, in length-sorted batches under a padded-token budget."""
    model.eval()
    out: torch.Tensor | None = None
    for idx in token_batches(enc.lengths, max_rows=batch_size, max_tokens=max_tokens):
        batch = collate(enc, idx)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"})  # windows mode: + "windows"
        if out is None:
            out = torch.empty((len(enc), logits.shape[-1]), dtype=logits.dtype)
        out[torch.as_tensor(idx)] = logits
    if out is None:
        return torch.empty((0, 0))
    return out


@torch.no_grad()
def embed_all(model, enc: Encoded, batch_size: int = 64, max_tokens: int | None = DEFAULT_MAX_TOKENS) -> torch.Tensor:
    """Pooled features ``(N, H)`` of a TaskModel's encoder (``(N, 2H)`` for a head reading ``mean+max`` windows), in
    the original row order."""
    model.eval()
    out = None
    for idx in token_batches(enc.lengths, max_rows=batch_size, max_tokens=max_tokens):
        batch = collate(enc, idx)
        z = model.embed(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "windows")})
        if out is None:
            out = torch.empty((len(enc), z.shape[-1]), dtype=z.dtype)
        out[torch.as_tensor(idx)] = z
    return out if out is not None else torch.empty((0, 0))


def decode(spec: TaskSpec, ids: Sequence[str], logits: torch.Tensor, decoding: Decoding | None = None) -> Predictions:
    """Predictions from logits ``(N, sum K_d)``: softmax per rubric dimension, then :func:`from_probabilities`."""
    probs = [p.detach().numpy() for p in probabilities(logits.detach(), spec.class_counts)]
    return from_probabilities(spec, ids, probs, decoding)
