"""Turn a trained TaskModel and texts into predicted scores, class probabilities and confidence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from scoreplex.encoding import DEFAULT_MAX_TOKENS, Encoded, collate, token_batches
from scoreplex.heads import probabilities
from scoreplex.tasks import TaskSpec


@dataclass
class Predictions:
    """Per response: predicted class per dimension ``(N, D)``, probabilities per dimension ``[(N, K_d)]``, and
    confidence ``(N,)`` = the smallest top-class probability over the dimensions."""

    spec: TaskSpec
    ids: list[str]
    labels: np.ndarray
    probs: list[np.ndarray]

    @property
    def confidence(self) -> np.ndarray:
        return np.min(np.stack([p.max(axis=1) for p in self.probs], axis=1), axis=1)

    def rows(self) -> list[dict]:
        """One JSON-ready dict per response (for writing score files)."""
        conf = self.confidence
        out = []
        for i, rid in enumerate(self.ids):
            row: dict = {"id": rid, "task": self.spec.id}
            for d, dim in enumerate(self.spec.dimensions):
                row[f"pred_{dim.name}"] = int(self.labels[i, d])
                for k in range(dim.num_classes):
                    row[f"prob_{dim.name}_{k}"] = round(float(self.probs[d][i, k]), 6)
            row["confidence"] = round(float(conf[i]), 6)
            out.append(row)
        return out


@torch.no_grad()
def predict_logits(
    model, enc: Encoded, batch_size: int = 64, max_tokens: int | None = DEFAULT_MAX_TOKENS
) -> torch.Tensor:
    """Logits ``(N, sum K)`` in the original row order, in length-sorted batches under a padded-token budget."""
    model.eval()
    out: torch.Tensor | None = None
    for idx in token_batches(enc.lengths, max_rows=batch_size, max_tokens=max_tokens):
        batch = collate(enc, idx)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        if out is None:
            out = torch.empty((len(enc), logits.shape[-1]), dtype=logits.dtype)
        out[torch.as_tensor(idx)] = logits
    if out is None:
        return torch.empty((0, 0))
    return out


@torch.no_grad()
def embed_all(model, enc: Encoded, batch_size: int = 64, max_tokens: int | None = DEFAULT_MAX_TOKENS) -> torch.Tensor:
    """Pooled features ``(N, H)`` of a TaskModel's encoder, in the original row order."""
    model.eval()
    out = None
    for idx in token_batches(enc.lengths, max_rows=batch_size, max_tokens=max_tokens):
        batch = collate(enc, idx)
        z = model.embed(batch["input_ids"], batch["attention_mask"])
        if out is None:
            out = torch.empty((len(enc), z.shape[-1]), dtype=z.dtype)
        out[torch.as_tensor(idx)] = z
    return out if out is not None else torch.empty((0, 0))


def decode(spec: TaskSpec, ids: list[str], logits: torch.Tensor) -> Predictions:
    probs = [p.detach().numpy() for p in probabilities(logits.detach(), spec.class_counts)]
    labels = np.stack([p.argmax(axis=1) for p in probs], axis=1).astype(np.int64) if probs else np.zeros((0, 0))
    return Predictions(spec=spec, ids=list(ids), labels=labels, probs=probs)
