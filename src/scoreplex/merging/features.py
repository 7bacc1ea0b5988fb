"""Each task model's features of its own task's responses: the point clouds GW-SMM compares.

The paper takes the final layer's [CLS] vector of each fine-tuned model on the responses of its own task; the
authors' notebooks took ``hidden_states[-3]`` instead. Both (and mean / pooler pooling) are settings here. Large tasks
are subsampled to ``cap`` responses with a seeded, id-based draw (the same ids whatever the row order), and the
features are cached on disk as safetensors, keyed by the model's module hash, the sampled ids and the settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from scoreplex.backbone import POOLINGS, pool
from scoreplex.data.dataset import TaskData
from scoreplex.encoding import DEFAULT_MAX_TOKENS, collate, encode_texts, token_batches
from scoreplex.errors import ConfigError, unknown_name


@dataclass(frozen=True)
class FeatureSettings:
    """Which features to take: hidden layer (-1 = last, as in the paper), pooling, and the per-task cap."""

    layer: int = -1
    pooling: str = "cls"
    cap: int | None = 1000
    """At most this many responses per task (seeded subsample); None takes all."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise unknown_name("feature pooling", self.pooling, POOLINGS)
        if self.cap is not None and self.cap < 2:
            raise ConfigError(f"feature cap={self.cap}; give at least 2 responses per task, or None for all.")


def sample_indices(ids: list[str], cap: int | None, seed: int) -> np.ndarray:
    """Row indices of a seeded subsample of at most ``cap`` responses, chosen by id (row order does not matter)."""
    n = len(ids)
    if cap is None or n <= cap:
        return np.arange(n)
    keys = [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in ids]
    chosen = np.argsort(np.array(keys))[:cap]
    return np.sort(chosen)


@torch.no_grad()
def extract_features(
    model, tokenizer, texts: list[str], max_length: int, settings: FeatureSettings = FeatureSettings()
) -> np.ndarray:
    """Pooled hidden states ``(N, H)`` (float32) of ``model.encoder`` at ``settings.layer``, in input order."""
    model.eval()
    enc = encode_texts(tokenizer, texts, max_length)
    out: np.ndarray | None = None
    for idx in token_batches(enc.lengths, max_rows=64, max_tokens=DEFAULT_MAX_TOKENS):
        batch = collate(enc, idx)
        wants_layer = settings.layer != -1
        res = model.encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=wants_layer
        )
        if wants_layer:
            layers = res.hidden_states
            if not -len(layers) <= settings.layer < len(layers):
                raise ConfigError(
                    f"feature layer {settings.layer} does not exist: the encoder has {len(layers)} hidden states "
                    f"(embeddings + {len(layers) - 1} layers); use -1 for the last or 0..{len(layers) - 1}."
                )
            hidden = layers[settings.layer]
        else:
            hidden = res.last_hidden_state
        z = pool(hidden, batch["attention_mask"], settings.pooling, getattr(res, "pooler_output", None))
        if out is None:
            out = np.empty((len(enc), z.shape[-1]), dtype=np.float32)
        out[np.asarray(idx)] = z.float().numpy()
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def _cache_key(module_hash: str, ids: list[str], max_length: int, settings: FeatureSettings) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"module": module_hash, "max_length": max_length, **asdict(settings)}).encode())
    for i in ids:
        h.update(i.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def suite_features(
    scorer,
    datasets: Mapping[str, TaskData],
    settings: FeatureSettings = FeatureSettings(),
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Features of every task model of a suite (via a :class:`~scoreplex.scorer.SuiteScorer`) on its own task's
    responses in ``datasets``; read from / written to ``cache_dir`` when given."""
    from safetensors.numpy import load_file, save_file

    from scoreplex.errors import UnknownTaskError
    from scoreplex.progress import progress_bar

    suite = scorer.suite
    missing = [t for t in datasets if not suite.has_task(t)]
    if missing:
        raise UnknownTaskError(
            f"the data has tasks {missing} that the suite at {suite.root} does not; it holds {suite.task_ids}."
        )
    cache = Path(cache_dir) if cache_dir is not None else None
    out: dict[str, np.ndarray] = {}
    with progress_bar(progress) as bar:
        job = bar.add_task("features", total=len(datasets))
        for task_id, data in datasets.items():
            idx = sample_indices(data.ids, settings.cap, settings.seed)
            ids = [data.ids[i] for i in idx]
            module_hash = suite.manifest["tasks"][task_id]["files"]["module.safetensors"]
            shared = suite.shared_of(task_id)
            if shared is not None:
                module_hash += suite.manifest["shared"][shared]["sha256"]
            path = None
            if cache is not None:
                path = cache / f"{task_id}-{_cache_key(module_hash, ids, scorer.max_length, settings)}.safetensors"
                if path.is_file():
                    out[task_id] = load_file(str(path))["features"]
                    bar.update(job, advance=1)
                    continue
            feats = extract_features(
                scorer.model(task_id), scorer.bb.tokenizer, [data.texts[i] for i in idx], scorer.max_length, settings
            )
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                save_file({"features": feats}, str(tmp), metadata={"task": task_id, "n": str(len(ids))})
                os.replace(tmp, path)
            out[task_id] = feats
            bar.update(job, advance=1)
    return out
